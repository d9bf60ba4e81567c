"""NetworkPolicy enforced on the test node: kube-router's network policy controller alone.

The node's CNI bridge plugin enforces no NetworkPolicy, so without this the chart's policies
(the tester's egress) would hold nowhere the tests could see. kube-router translates the
policies of the pods on the node into iptables chains and ipsets in the host's filter table;
its router and service proxy stay off (the bridge plugin and kube-proxy do their parts).

The binary comes from `make kube-router` (hack/build-kube-router.sh) through
TARS_KUBE_ROUTER_DIR. It is kube-router v2.1.0, the newest the module proxy serves, for
which security flaws are reported: it runs only here, on this machine, against the tests'
own API server. Its rules are machine-wide, so it runs only while the node holds NODE_LOCK
(inside a running `ContainerNode`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from kubernetes import client, config

from tests.harness import controlplane
from tests.harness.node import NODE_NAME, ContainerNode
from tests.harness.tools import run_tool, stop_process

BINARY = "kube-router"
# Its identity in the cluster, held by RBAC to what the policy controller reads.
USER = "system:kube-router"
ROLE = "tars-kube-router"
READY_SECONDS = 120
# Debian puts ipset and iptables in sbin, which a user's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# The chain every packet of the host's filter table passes once the controller has synced.
INPUT_CHAIN = "KUBE-ROUTER-INPUT"
# The names of kube-router's chains and ipsets (pkg/controllers/netpol), and the host's
# chains that jump to them.
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")
BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
# What kube-router runs, and this module's clean-up.
REQUIRED_COMMANDS = ("ipset", "iptables", "iptables-save", "iptables-restore")


class PolicyControllerError(RuntimeError):
    """kube-router could not be started; the message says why and where its log is."""


def missing_build(bin_dir: Path) -> str | None:
    """Why BIN_DIR cannot enforce the node's policies, or None when it can."""
    if not os.access(bin_dir / BINARY, os.X_OK):
        return f"{bin_dir} lacks {BINARY}; run `make kube-router`"
    for command in REQUIRED_COMMANDS:
        if shutil.which(command, path=SEARCH_PATH) is None:
            return f"{command} is not installed; run `make kube-router`"
    return None


def _read_only_role() -> client.V1ClusterRole:
    """What the controller reads: the policies and the pods and namespaces they select."""
    verbs = ["get", "list", "watch"]
    return client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name=ROLE),
        rules=[
            client.V1PolicyRule(
                api_groups=[""],
                resources=["namespaces", "pods", "services", "nodes", "endpoints"],
                verbs=verbs,
            ),
            client.V1PolicyRule(
                api_groups=["networking.k8s.io"], resources=["networkpolicies"], verbs=verbs
            ),
            client.V1PolicyRule(
                api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=verbs
            ),
        ],
    )


def _role_binding() -> client.V1ClusterRoleBinding:
    return client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=ROLE),
        role_ref=client.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=ROLE
        ),
        subjects=[
            client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name=USER)
        ],
    )


def log_path(node: ContainerNode) -> Path:
    """Where the controller of NODE writes its output (tests print it when they fail)."""
    return node.state_dir / "logs" / f"{BINARY}.log"


class PolicyController:
    """kube-router's network policy controller for NODE (a context manager)."""

    def __init__(self, node: ContainerNode, bin_dir: Path) -> None:
        self.node, self.bin_dir = node, bin_dir
        self.log_path = log_path(node)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> None:
        plane = self.node.plane
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        try:
            rbac = client.RbacAuthorizationV1Api(api)
            rbac.create_cluster_role(_read_only_role())
            rbac.create_cluster_role_binding(_role_binding())
        finally:
            api.close()
        # What a controller killed before its clean-up left (a test session killed).
        remove_rules()
        kubeconfig = controlplane.client_kubeconfig(plane, BINARY, USER, [])
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                str(self.bin_dir / BINARY),
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--enable-pod-egress=false",
                "--enable-ipv6=false",
                f"--service-cluster-ip-range={controlplane.SERVICE_CIDR}",
                # No health endpoint: it would listen on every address of the machine.
                "--health-port=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": SEARCH_PATH},
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + READY_SECONDS
        while not _chain_exists(INPUT_CHAIN):
            if self._process.poll() is not None:
                raise PolicyControllerError(
                    f"{BINARY} exited (status {self._process.returncode}); see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise PolicyControllerError(f"timed out waiting for {BINARY}; see {self.log_path}")
            time.sleep(0.5)

    def _stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, grace_seconds=20)
            self._process = None
        remove_rules()


def remove_rules() -> None:
    """Removes kube-router's chains and ipsets from the host, and the jumps to them.

    kube-router v2.1.0's own `--cleanup-config` removes none of them (it cleans up with a
    policy controller it never set up) and then crashes in its service proxy's clean-up.
    Only kube-router names chains and ipsets so (kube-proxy's iptables mode uses no ipsets).
    """
    iptables = _sbin("iptables")
    listed = [
        shlex.split(line) for line in run_tool([iptables, "--wait", "-S"]).stdout.splitlines()
    ]
    for rule in listed:
        if rule[0] == "-A" and rule[1] in BUILTIN_CHAINS and _jumps_to_kube_router(rule):
            run_tool([iptables, "--wait", "-D", *rule[1:]])
    chains = [rule[1] for rule in listed if rule[0] == "-N" and rule[1].startswith(CHAIN_PREFIXES)]
    # Flushed first, so no chain of theirs is still a target when it is deleted.
    for action in ("--flush", "--delete-chain"):
        for chain in chains:
            run_tool([iptables, "--wait", action, chain])
    ipset = _sbin("ipset")
    for name in run_tool([ipset, "list", "-name"]).stdout.split():
        if name.startswith(IPSET_PREFIXES):
            run_tool([ipset, "destroy", name])


def filter_rules() -> str:
    """The host's filter table, as iptables-save writes it."""
    return run_tool([_sbin("iptables-save"), "--table", "filter"]).stdout


def _jumps_to_kube_router(rule: list[str]) -> bool:
    return "-j" in rule and rule[rule.index("-j") + 1].startswith(CHAIN_PREFIXES)


def _sbin(command: str) -> str:
    found = shutil.which(command, path=SEARCH_PATH)
    if found is None:
        raise PolicyControllerError(f"{command} is not installed; run `make kube-router`")
    return found


def _chain_exists(chain: str) -> bool:
    listed = run_tool([_sbin("iptables"), "--wait", "--list", chain, "--numeric"], check=False)
    return listed.returncode == 0

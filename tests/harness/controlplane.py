"""A local Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

`up` generates a CA and certificates with the `openssl` CLI, starts the three processes on
free loopback ports (so several clusters can run side by side), waits until the API server
is ready and the controllers are working, and writes an admin kubeconfig. `down` stops
exactly the processes `up` recorded in the state directory. The binaries come from
`make tools` (hack/build-tools.sh); pass their directory as TARS_TOOLS_DIR.

    python -m tests.harness.controlplane up --state-dir .dev
    python -m tests.harness.controlplane down --state-dir .dev

The pytest fixtures in tests/conftest.py use this module directly.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel

from tests.harness.credentials import kubeconfig_document, write_kubeconfig, write_private

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CIDR = "10.96.0.0/12"
# The first address of SERVICE_CIDR: the ClusterIP of the `kubernetes` Service.
API_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "tars-dev"
ADMIN_USER = "tars-admin"
FRONT_PROXY_USER = "front-proxy-client"
# Stopped in this order: clients of the API server first, etcd last.
COMPONENTS = ("kube-controller-manager", "kube-apiserver", "etcd")
STATE_FILE = "cluster.json"
# Everything `up` writes in the state directory; a fresh `up` removes only these.
OWNED_ENTRIES = ("pki", "etcd-data", "logs", "run", "kubeconfig", STATE_FILE)
# What one launch attempt writes; a retry on fresh ports starts from none of it.
LAUNCH_ENTRIES = ("etcd-data", "logs", "run", "kubeconfig")
PORT_ATTEMPTS = 3


class DevClusterError(RuntimeError):
    """The control plane could not be started or stopped; the message says why."""


class PortTakenError(DevClusterError):
    """A component could not listen: another process took its free port first."""


class ControlPlane(BaseModel):
    """A running control plane, as recorded in STATE_DIR/cluster.json."""

    state_dir: Path
    tools_dir: Path
    server: str
    kubeconfig: Path
    etcd_url: str
    controller_manager_url: str
    pids: dict[str, int]

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"


def directory_from_env(variable: str = "TARS_TOOLS_DIR", make_target: str = "tools") -> Path:
    """The directory of a build, from VARIABLE (the built binaries: TARS_TOOLS_DIR)."""
    value = os.environ.get(variable, "")
    if not value:
        raise DevClusterError(
            f"{variable} is not set; run `make {make_target}` and point it at the directory "
            "it prints"
        )
    return Path(value)


def missing_binaries(tools_dir: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(tools_dir / name, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- certificates -------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise DevClusterError(
            "the `openssl` command is needed to create the cluster's certificates"
        )
    result = subprocess.run(
        ["openssl", *args], check=False, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise DevClusterError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_ec_key(pki: Path, name: str) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", f"{name}.key", cwd=pki,
    )  # fmt: skip


def _issue_certificate(
    pki: Path,
    name: str,
    common_name: str,
    *,
    organizations: Iterable[str] = (),
    server_names: Iterable[str] = (),
    server_ips: Iterable[str] = (),
    issuer: str = "ca",
) -> None:
    """Writes NAME.key and NAME.crt signed by ISSUER (a server cert when names are given)."""
    _new_ec_key(pki, name)
    subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    alt_names = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth' if alt_names else 'clientAuth'}",
    ]
    if alt_names:
        extensions.append("subjectAltName=" + ",".join(alt_names))
    (pki / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.crt",
        cwd=pki,
    )  # fmt: skip
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def _create_certificate_authority(pki: Path, name: str) -> None:
    _new_ec_key(pki, name)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={CLUSTER_NAME}-{name}",
        "-days", "3650", "-sha256", "-out", f"{name}.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip


def _create_pki(pki: Path, advertise_address: str | None) -> None:
    pki.mkdir(parents=True)
    _create_certificate_authority(pki, "ca")
    # The aggregation layer authenticates the API server to extension API servers with
    # its own CA; components that serve HTTPS expect it to be published.
    _create_certificate_authority(pki, "front-proxy-ca")
    _issue_certificate(pki, "front-proxy-client", FRONT_PROXY_USER, issuer="front-proxy-ca")
    _issue_certificate(
        pki,
        "kube-apiserver",
        "kube-apiserver",
        server_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        server_ips=[
            "127.0.0.1",
            API_SERVICE_IP,
            *([advertise_address] if advertise_address else []),
        ],
    )
    _issue_certificate(
        pki, "kube-controller-manager-serving", "kube-controller-manager",
        server_names=["localhost"], server_ips=["127.0.0.1"],
    )  # fmt: skip
    # The bootstrap RBAC policy grants its controllers' roles to this user name.
    _issue_certificate(pki, "kube-controller-manager", "system:kube-controller-manager")
    _issue_certificate(pki, "admin", ADMIN_USER, organizations=["system:masters"])
    # How the API server proves itself to a node's kubelet (logs, exec): the kubelet trusts
    # client certificates from the cluster's CA (tests/harness/node.py).
    _issue_certificate(pki, "kube-apiserver-kubelet-client", "kube-apiserver-kubelet-client")
    # Service-account tokens are signed with RS256, the algorithm every client accepts.
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", "service-account.key", cwd=pki,
    )  # fmt: skip
    _openssl(
        "pkey", "-in", "service-account.key", "-pubout", "-out", "service-account.pub", cwd=pki
    )


def _write_kubeconfig(path: Path, server: str, pki: Path, user: str, cert_name: str) -> None:
    def data(file: str) -> str:
        return base64.b64encode((pki / file).read_bytes()).decode()

    cluster = {"server": server, "certificate-authority-data": data("ca.crt")}
    credentials = {
        "client-certificate-data": data(f"{cert_name}.crt"),
        "client-key-data": data(f"{cert_name}.key"),
    }
    write_kubeconfig(
        path,
        kubeconfig_document(
            cluster, user, credentials, cluster_name=CLUSTER_NAME, context_name=CLUSTER_NAME
        ),
    )


def client_kubeconfig(plane: ControlPlane, name: str, user: str, groups: Iterable[str]) -> Path:
    """A kubeconfig for USER in GROUPS, with a client certificate from the cluster's CA.

    Components other than the control plane's own (a node's kubelet, the scheduler) get
    their own identities, so the Node authorizer and RBAC hold them to what they may do.
    """
    pki = plane.state_dir / "pki"
    _issue_certificate(pki, name, user, organizations=groups)
    path = pki / f"{name}.kubeconfig"
    _write_kubeconfig(path, plane.server, pki, user, name)
    return path


# --- processes ----------------------------------------------------------------------------


def _pid_file(state_dir: Path, component: str) -> Path:
    return state_dir / "run" / f"{component}.pid"


def log_file(state_dir: Path, component: str) -> Path:
    return state_dir / "logs" / f"{component}.log"


def start_detached(
    state_dir: Path, component: str, argv: list[str], cwd: Path | None = None
) -> int:
    """Starts ARGV detached from this process (it outlives `up`) and records its pid."""
    log = log_file(state_dir, component)
    # The shell starts the command in the background and exits, so the component is not a
    # child of this process: nothing here has to reap it, and `down` works from any process.
    launcher = subprocess.run(
        ["/bin/sh", "-c", '"$@" >"$TARS_LOG" 2>&1 </dev/null & echo $!', "sh", *argv],
        env={**os.environ, "TARS_LOG": str(log)},
        cwd=cwd,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    pid = int(launcher.stdout.strip())
    # The binary goes with the pid so `down` can tell the process from a later one reusing the pid.
    _pid_file(state_dir, component).write_text(f"{pid} {argv[0]}\n")
    return pid


def is_running(pid: int, binary: Path) -> bool:
    """Whether PID is alive and still runs BINARY (pids get reused)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and command == os.fsencode(binary)


def _stop(pid: int, binary: Path, grace_seconds: float) -> None:
    if not is_running(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not is_running(pid, binary):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    while is_running(pid, binary):
        time.sleep(0.05)


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- readiness ----------------------------------------------------------------------------


def _https_context(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


def _wait_until(
    description: str,
    ready: Callable[[], bool],
    *,
    deadline: float,
    watched: dict[str, tuple[int, Path]],
    state_dir: Path,
) -> None:
    """Polls READY until it holds; fails early when a WATCHED component has exited."""
    while True:
        if ready():
            return
        for component, (pid, binary) in watched.items():
            if not is_running(pid, binary):
                log = log_file(state_dir, component)
                tail = log_tail(log)
                error = PortTakenError if "address already in use" in tail else DevClusterError
                raise error(
                    f"{component} exited while waiting for {description}; "
                    f"last lines of {log}:\n{tail}"
                )
        if time.monotonic() > deadline:
            raise DevClusterError(f"timed out waiting for {description} (logs in {state_dir}/logs)")
        time.sleep(0.2)


# --- up / down ----------------------------------------------------------------------------


def load(state_dir: Path) -> ControlPlane | None:
    """The control plane recorded in STATE_DIR, if `up` recorded one."""
    try:
        return ControlPlane.model_validate_json((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def is_up(plane: ControlPlane) -> bool:
    return all(
        is_running(pid, plane.tools_dir / component) for component, pid in plane.pids.items()
    )


def up(
    state_dir: Path,
    tools_dir: Path,
    *,
    timeout_seconds: float = 180,
    advertise_address: str | None = None,
) -> ControlPlane:
    """Starts a control plane recorded in STATE_DIR and returns once it serves requests.

    When STATE_DIR already records a running control plane, that one is returned.

    By default the API server is on loopback only, and the `kubernetes` Service has no
    endpoint. With ADVERTISE_ADDRESS (an address of this host that pods route to, such as a
    node's address on its pods' bridge) it listens on every address and the `kubernetes`
    Service's endpoint is ADVERTISE_ADDRESS, so pods reach it at its ClusterIP through a
    node's kube-proxy, as in-cluster clients do.
    """
    state_dir = state_dir.resolve()
    tools_dir = tools_dir.resolve()
    existing = load(state_dir)
    if existing is not None and is_up(existing):
        return existing
    missing = missing_binaries(tools_dir)
    if missing:
        raise DevClusterError(f"{tools_dir} lacks {', '.join(missing)}; run `make tools`")
    down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    _remove_entries(state_dir, OWNED_ENTRIES)
    _create_pki(state_dir / "pki", advertise_address)
    deadline = time.monotonic() + timeout_seconds
    # A free port can be taken by someone else before the component binds it; then the
    # whole launch is repeated on fresh ports.
    for attempt in range(1, PORT_ATTEMPTS + 1):
        _remove_entries(state_dir, LAUNCH_ENTRIES)
        for directory in ("logs", "run"):
            (state_dir / directory).mkdir()
        try:
            plane = _launch(state_dir, tools_dir, deadline, advertise_address)
            break
        except PortTakenError:
            if attempt == PORT_ATTEMPTS:
                raise
    write_private(state_dir / STATE_FILE, plane.model_dump_json(indent=2) + "\n")
    return plane


def _remove_entries(state_dir: Path, entries: Iterable[str]) -> None:
    for entry in entries:
        path = state_dir / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _launch(
    state_dir: Path, tools_dir: Path, deadline: float, advertise_address: str | None
) -> ControlPlane:
    """Starts the components on fresh free ports; stops whatever started if one fails."""
    pki = state_dir / "pki"
    etcd_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    api_port = free_port()
    server = f"https://127.0.0.1:{api_port}"
    controller_manager_port = free_port()
    kubeconfig = state_dir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, pki, ADMIN_USER, "admin")
    controller_manager_kubeconfig = pki / "kube-controller-manager.kubeconfig"
    _write_kubeconfig(
        controller_manager_kubeconfig,
        server,
        pki,
        "system:kube-controller-manager",
        "kube-controller-manager",
    )

    context = _https_context(pki)
    watched: dict[str, tuple[int, Path]] = {}
    pids: dict[str, int] = {}

    def start(component: str, arguments: list[str]) -> None:
        binary = tools_dir / component
        pids[component] = start_detached(state_dir, component, [str(binary), *arguments])
        watched[component] = (pids[component], binary)

    try:
        start(
            "etcd",
            [
                "--name=default",
                f"--data-dir={state_dir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--log-level=warn",
            ],
        )
        _wait_until(
            "etcd",
            lambda: _get(f"{etcd_url}/health")[0] == 200,
            deadline=deadline,
            watched=watched,
            state_dir=state_dir,
        )
        start(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                *_advertising(advertise_address),
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'kube-apiserver.crt'}",
                f"--tls-private-key-file={pki / 'kube-apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_USER}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={pki / 'kube-apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kube-apiserver-kubelet-client.key'}",
                # A node's name is not in any DNS here; its InternalIP is where its kubelet is.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'service-account.pub'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                "--profiling=false",
            ],
        )
        _wait_until(
            "kube-apiserver /readyz",
            lambda: _get(f"{server}/readyz", context)[0] == 200,
            deadline=deadline,
            watched=watched,
            state_dir=state_dir,
        )
        start(
            "kube-controller-manager",
            [
                f"--kubeconfig={controller_manager_kubeconfig}",
                f"--authentication-kubeconfig={controller_manager_kubeconfig}",
                f"--authorization-kubeconfig={controller_manager_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={controller_manager_port}",
                f"--tls-cert-file={pki / 'kube-controller-manager-serving.crt'}",
                f"--tls-private-key-file={pki / 'kube-controller-manager-serving.key'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        controller_manager_url = f"https://127.0.0.1:{controller_manager_port}"
        _wait_until(
            "kube-controller-manager /healthz",
            lambda: _get(f"{controller_manager_url}/healthz", context)[0] == 200,
            deadline=deadline,
            watched=watched,
            state_dir=state_dir,
        )
        # The serviceaccount controller creating `default` in the `default` namespace shows
        # that the namespace exists and the controllers are running with their credentials.
        _wait_until(
            "the default service account",
            lambda: (
                _get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", context)[0]
                == 200
            ),
            deadline=deadline,
            watched=watched,
            state_dir=state_dir,
        )
    except BaseException:
        stop_recorded(state_dir)
        raise
    return ControlPlane(
        state_dir=state_dir,
        tools_dir=tools_dir,
        server=server,
        kubeconfig=kubeconfig,
        etcd_url=etcd_url,
        controller_manager_url=controller_manager_url,
        pids=pids,
    )


def _advertising(advertise_address: str | None) -> list[str]:
    """The API server's flags for where it listens and what the `kubernetes` Service lists."""
    if advertise_address is None:
        # The `kubernetes` Service cannot list a loopback address as its endpoint.
        return [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
    # The address may not exist yet (a node's bridge comes up after the control plane), so
    # the API server listens on every address rather than on that one.
    return [
        "--bind-address=0.0.0.0",
        f"--advertise-address={advertise_address}",
        "--endpoint-reconciler-type=lease",
    ]


def recorded_process(state_dir: Path, component: str) -> tuple[int, Path] | None:
    """The pid and binary `start_detached` recorded for COMPONENT, if it recorded any."""
    try:
        pid, binary = _pid_file(state_dir, component).read_text().split(maxsplit=1)
    except FileNotFoundError:
        return None
    return int(pid), Path(binary.strip())


def stop_recorded(
    state_dir: Path, components: Iterable[str] = COMPONENTS, grace_seconds: float = 10
) -> bool:
    """Stops COMPONENTS where STATE_DIR has their pid files, in order; returns whether there
    was any."""
    stopped_any = False
    for component in components:
        recorded = recorded_process(state_dir, component)
        if recorded is None:
            continue
        _stop(*recorded, grace_seconds)
        _pid_file(state_dir, component).unlink()
        stopped_any = True
    return stopped_any


def down(state_dir: Path) -> bool:
    """Stops what `up` started in STATE_DIR (safe to repeat); returns whether anything was."""
    state_dir = state_dir.resolve()
    stopped_any = stop_recorded(state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped_any


# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.controlplane", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where certificates, data, logs and pids live"
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for readiness (up)"
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "up":
            plane = up(arguments.state_dir, directory_from_env(), timeout_seconds=arguments.timeout)
            print(f"control plane up at {plane.server}; export KUBECONFIG={plane.kubeconfig}")
        elif down(arguments.state_dir):
            print(f"control plane in {arguments.state_dir} stopped")
        else:
            print(f"no control plane recorded in {arguments.state_dir}")
    except DevClusterError as error:
        print(f"controlplane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

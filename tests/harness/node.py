"""A real Kubernetes node for the tests: containerd with runc, the kubelet, kube-proxy and
kube-scheduler.

Pods scheduled to it run as containers from real images, under the runtime's enforcement of
what their spec asks for: user and group, read-only root filesystem, capabilities, seccomp,
user namespaces, resource limits, service-account tokens. Its pods share one bridge network
(`POD_SUBNET`) that the host reaches, so the API server's service proxy reaches their ports.
kube-proxy (iptables mode) gives Services their ClusterIPs, so pods reach the API server at
the `kubernetes` Service when the control plane advertises `NODE_IP`
(`controlplane.up(..., advertise_address=NODE_IP)`). Nothing resolves names in these pods
(replicas find each other by pod IP in EndpointSlices), so the node runs no DNS.

No registry is reachable, so images come in as archives (`import_archive`, or
`import_archive_file` for what `make images` built and saved) and the pause image of the pod sandbox
is made here from the node's own `pause` binary. The binaries come from `make node`
(hack/build-node.sh) through TARS_NODE_DIR; the CNI plugins are Debian's.

The kubelet's cgroups (`/kubepods`) and the pods' bridge are machine-wide, so one node runs
on a machine at a time (`NODE_LOCK`). Its holder writes who it is into the lock: a test
session frees the node when it ends, so others wait for it; `make dev-up` keeps it until
`make dev-down`, so others fail at once, saying so.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from kubernetes import client, config
from pydantic import BaseModel, ConfigDict, ValidationError

from tests.harness import controlplane
from tests.harness.images import Engine
from tests.harness.tools import stop_process

BINARIES = (
    "kubelet",
    "kube-scheduler",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "pause",
    "crictl",
)
CNI_PLUGIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
NODE_NAME = "tars-node"
PAUSE_IMAGE = "localhost/tars-pause:1"
POD_SUBNET = "10.244.0.0/24"
BRIDGE = "tars0"
# The node's own address, on the pods' bridge: the kubelet refuses a loopback node IP, and
# the API server must reach the kubelet (logs, exec) and the pods at addresses it routes.
NODE_IP = "10.244.0.1"
# The containerd namespace the CRI plugin keeps Kubernetes' images and containers in.
CRI_NAMESPACE = "k8s.io"
# What the CRI makes of an image reference that names no registry (`tars-replica:0.1.0`).
UNQUALIFIED_IMAGE_PREFIX = "docker.io/library/"
NODE_LOCK = Path("/tmp/tars-selfcoding-node.lock")
# crictl's config for the node that runs now, at a place that does not change with the node's
# state directory, so that anyone can list its containers meanwhile (`crictl_command`).
CRICTL_CONFIG = Path("/tmp/tars-selfcoding-node.crictl.yaml")
READY_SECONDS = 120


class NodeError(RuntimeError):
    """The node could not be started; the message says why and where its logs are."""


class NodeBusyError(NodeError):
    """The node is held by another, and not to be waited for: its holder keeps it until told
    (the message says how), or the caller does not wait."""


class NodeHolder(BaseModel):
    """Who holds NODE_LOCK, as its holder writes it into the lock file."""

    model_config = ConfigDict(frozen=True)

    pid: int
    purpose: str
    released_by: str | None = None
    """What frees the node when its holder keeps it until told (`make dev-down`); None for a
    holder that frees it when it ends, which others wait for."""


def session_holder() -> NodeHolder:
    return NodeHolder(pid=os.getpid(), purpose=f"a test session ({' '.join(sys.argv)})")


class NodeLock:
    """The lock at PATH (NODE_LOCK), taken for HOLDER: `acquire` waits for a holder that frees
    the node by itself (unless not WAIT), and raises NodeBusyError at once for one that keeps
    it until told."""

    def __init__(self, holder: NodeHolder, path: Path = NODE_LOCK, *, wait: bool = True) -> None:
        self.holder, self.path, self.wait = holder, path, wait
        self._descriptor: int | None = None

    def acquire(self) -> None:
        descriptor = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _holder(descriptor)
            if current is not None and current.pid == os.getpid():
                os.close(descriptor)
                raise NodeBusyError(
                    f"this process holds the node already, as {current.purpose}"
                ) from None
            if not self.wait or (current is not None and current.released_by is not None):
                os.close(descriptor)
                raise NodeBusyError(
                    node_busy_message(current) if current else "the node is held"
                ) from None
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, self.holder.model_dump_json().encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            # A holder of an older checkout writes no record, and must not seem to be this one.
            os.ftruncate(self._descriptor, 0)
            os.close(self._descriptor)
            self._descriptor = None


@contextmanager
def holding_node(holder: NodeHolder, path: Path = NODE_LOCK) -> Iterator[None]:
    """The node lock held for HOLDER meanwhile (NodeLock)."""
    lock = NodeLock(holder, path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def node_busy_message(holder: NodeHolder) -> str:
    freed = holder.released_by or "it ends"
    return f"the node is held by {holder.purpose} (pid {holder.pid}) until {freed}"


def current_holder(path: Path = NODE_LOCK) -> NodeHolder | None:
    """Who holds the lock at PATH now; None when nobody does."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(descriptor)
    finally:
        os.close(descriptor)
    return None


def _holder(descriptor: int) -> NodeHolder | None:
    """The holder of the lock on DESCRIPTOR's file: its record where the kernel's list of
    locks (/proc/locks) has the same owner, else that owner, named by its command line (a
    holder of an older checkout writes no record); None when it is gone."""
    written = _written_holder(descriptor)
    inode = os.fstat(descriptor).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # A waiter's line reads `N: -> FLOCK ...`.
        if fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[1] == str(inode):
            pid = int(fields[4])
            if written is not None and written.pid == pid:
                return written
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            except FileNotFoundError:
                return None
            return NodeHolder(pid=pid, purpose=f"`{command.decode(errors='replace')}`")
    return None


def _written_holder(descriptor: int) -> NodeHolder | None:
    written = os.pread(descriptor, 4096, 0)
    try:
        return NodeHolder.model_validate_json(written) if written else None
    except ValidationError:
        # A holder of an older checkout, which writes nothing, or one still writing.
        return None


def missing_build(bin_dir: Path) -> str | None:
    """Why BIN_DIR cannot make a node, or None when it can."""
    missing = [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]
    missing += [
        str(CNI_PLUGIN_DIR / name)
        for name in CNI_PLUGINS
        if not os.access(CNI_PLUGIN_DIR / name, os.X_OK)
    ]
    if missing:
        return f"{bin_dir} lacks {', '.join(missing)}; run `make node`"
    if os.geteuid() != 0:
        return "a node's kubelet and containerd need root"
    return None


def crictl_command(bin_dir: Path) -> list[str]:
    """crictl from BIN_DIR, talking to the node that runs now (CRICTL_CONFIG)."""
    return [str(bin_dir / "crictl"), f"--config={CRICTL_CONFIG}"]


def oci_archive(reference: str, files: dict[str, tuple[bytes, int]], image_config: dict) -> bytes:
    """An OCI image layout as a tar: one uncompressed layer holding FILES (name: data, mode)."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, (data, mode) in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), mode
            layer.addfile(member, io.BytesIO(data))
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_descriptor = blob(layer_buffer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config_descriptor = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": image_config,
                "rootfs": {"type": "layers", "diff_ids": [layer_descriptor["digest"]]},
            }
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor,
                "layers": [layer_descriptor],
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["annotations"] = {"io.containerd.image.name": reference}
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode(),
        **{
            f"blobs/sha256/{digest.removeprefix('sha256:')}": data for digest, data in blobs.items()
        },
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in entries.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return archive.getvalue()


def _containerd_config(state_dir: Path, bin_dir: Path) -> str:
    root, state = state_dir / "containerd", state_dir / "containerd-state"
    return f"""\
version = 3
root = '{root}'
state = '{state}'

[grpc]
  address = '{state_dir / "containerd.sock"}'
[ttrpc]
  address = '{state_dir / "containerd.sock.ttrpc"}'

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '{PAUSE_IMAGE}'

[plugins.'io.containerd.cri.v1.runtime']
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root
  # lacks: containers keep containerd's own score or a higher one.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '{bin_dir / "runc"}'
  Root = '{state_dir / "runc"}'
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['{CNI_PLUGIN_DIR}']
  conf_dir = '{state_dir / "cni"}'
"""


def _crictl_config(state_dir: Path) -> dict[str, object]:
    endpoint = f"unix://{state_dir / 'containerd.sock'}"
    return {"runtime-endpoint": endpoint, "image-endpoint": endpoint, "timeout": 10}


def _cni_config(state_dir: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "tars-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state_dir / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def _kubelet_config(state_dir: Path, plane: controlplane.ControlPlane) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        # This machine mounts cgroup v1 (hybrid); Kubernetes still runs on it when asked to.
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{state_dir / 'containerd.sock'}",
        # Only the API server talks to the kubelet, with a certificate from the cluster's CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(plane.ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "address": NODE_IP,
        "port": controlplane.free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": controlplane.free_port(),
        "podLogsDir": str(state_dir / "pod-logs"),
        "volumePluginDir": str(state_dir / "volume-plugins"),
        "failSwapOn": False,
        "serializeImagePulls": False,
        # No disk pressure or image garbage collection: the node's images cannot be pulled again.
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
    }


def _kube_proxy_config(kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        # Traffic from outside POD_SUBNET to a ClusterIP is masqueraded, so replies return
        # through the node.
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{controlplane.free_port()}",
        "metricsBindAddress": f"127.0.0.1:{controlplane.free_port()}",
        # Lowering its OOM score (the default is -999) needs CAP_SYS_RESOURCE, which this
        # machine's root lacks.
        "oomScoreAdj": 0,
        # Zero leaves the host's conntrack table size and timeouts as they are: they are
        # machine-wide sysctls, and a test node must not retune the machine.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # NodePorts only on NODE_IP, not on every address of the machine (nor on loopback,
        # which would need net.ipv4.conf.all.route_localnet).
        "nodePortAddresses": ["primary"],
    }


class ContainerNode:
    """A node named NODE_NAME in PLANE's cluster, running pods as containers (a context manager)."""

    def __init__(
        self,
        plane: controlplane.ControlPlane,
        bin_dir: Path,
        state_dir: Path,
        holder: NodeHolder | None = None,
        *,
        wait_for_node: bool = True,
    ) -> None:
        self.plane, self.bin_dir, self.state_dir = plane, bin_dir, state_dir
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = NodeLock(holder or session_holder(), wait=wait_for_node)

    # --- images -------------------------------------------------------------------------

    def ctr(self, *arguments: str, input: bytes | None = None) -> str:
        address = f"--address={self.state_dir / 'containerd.sock'}"
        ctr = [str(self.bin_dir / "ctr"), address, f"--namespace={CRI_NAMESPACE}"]
        return _output("ctr", ctr, arguments, input)

    def import_archive(self, archive: bytes) -> None:
        """Loads an image archive (OCI layout or docker-archive) into the node's runtime."""
        self.ctr("images", "import", "--all-platforms", "-", input=archive)

    def import_archive_file(self, archive: Path) -> None:
        """Loads an image archive file (`docker save`, `podman save`) into the node's runtime."""
        self.ctr("images", "import", "--all-platforms", str(archive))

    def load_built_image(self, engine: Engine, reference: str) -> None:
        """Loads REFERENCE, an image `make images` built, unless the runtime has it already."""
        if reference in self.images():
            return
        with tempfile.TemporaryDirectory(prefix="tars-node-image-") as scratch:
            archive = Path(scratch) / "image.tar"
            engine.call("save", "-o", str(archive), reference)
            self.import_archive_file(archive)

    def tag_unqualified(self, reference: str) -> str:
        """Also names REFERENCE (`localhost/tars-replica:0.1.0`) as its name without the
        registry, which pods that name it so (the chart's defaults) get; returns that name."""
        unqualified = UNQUALIFIED_IMAGE_PREFIX + reference.rpartition("/")[2]
        if unqualified != reference:
            self.ctr("images", "tag", "--force", reference, unqualified)
        return unqualified

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").split()

    def containers(self) -> list[str]:
        """The runtime's own list of its containers, pod sandboxes included."""
        return self.ctr("containers", "list", "--quiet").split()

    def crictl(self, *arguments: str) -> str:
        """crictl's output for ARGUMENTS, as a user gets it with `crictl_command`."""
        return _output("crictl", crictl_command(self.bin_dir), arguments)

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._lock.acquire()
        self._clear_leftovers()
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

    def _spawn(self, component: str, argv: list[str]) -> None:
        log = (self.state_dir / "logs" / f"{component}.log").open("wb")
        environment = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}
        self._processes[component] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
        log.close()

    def _wait(self, description: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while not ready():
            for component, process in self._processes.items():
                if process.poll() is not None:
                    raise NodeError(
                        f"{component} exited (status {process.returncode}) while waiting for "
                        f"{description}; see {self.state_dir / 'logs' / component}.log"
                    )
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {description} (logs in {self.state_dir})")
            time.sleep(0.5)

    def _start(self) -> None:
        for directory in ("logs", "cni", "cni-ipam", "pod-logs", "volume-plugins", "kubelet"):
            (self.state_dir / directory).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "containerd.toml").write_text(
            _containerd_config(self.state_dir, self.bin_dir)
        )
        (self.state_dir / "cni" / "10-tars-pods.conflist").write_text(
            json.dumps(_cni_config(self.state_dir))
        )
        # The bridge goes up before any pod, so the kubelet can listen on the node's address.
        for command in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "address", "add", f"{NODE_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise NodeError(f"{' '.join(command)}: {done.stderr.strip()}")
        self._spawn(
            "containerd",
            [str(self.bin_dir / "containerd"), f"--config={self.state_dir / 'containerd.toml'}"],
        )
        self._wait("containerd", lambda: (self.state_dir / "containerd.sock").is_socket())
        # JSON is YAML, which crictl reads.
        CRICTL_CONFIG.write_text(json.dumps(_crictl_config(self.state_dir)))
        pause = (self.bin_dir / "pause").read_bytes()
        self.import_archive(
            oci_archive(
                PAUSE_IMAGE,
                {"pause": (pause, 0o755)},
                {"Entrypoint": ["/pause"], "User": "65535:65535"},
            )
        )
        kubelet_kubeconfig = controlplane.client_kubeconfig(
            self.plane, "kubelet", f"system:node:{NODE_NAME}", ["system:nodes"]
        )
        scheduler_kubeconfig = controlplane.client_kubeconfig(
            self.plane, "kube-scheduler", "system:kube-scheduler", []
        )
        proxy_kubeconfig = controlplane.client_kubeconfig(
            self.plane, "kube-proxy", "system:kube-proxy", []
        )
        (self.state_dir / "kubelet.yaml").write_text(
            json.dumps(_kubelet_config(self.state_dir, self.plane))
        )
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.state_dir / 'kubelet.yaml'}",
                f"--kubeconfig={kubelet_kubeconfig}",
                f"--root-dir={self.state_dir / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={controlplane.free_port()}",
                "--leader-elect=false",
            ],
        )
        self._wait("node tars-node to be Ready", self._node_ready)
        proxy_config = _kube_proxy_config(proxy_kubeconfig)
        (self.state_dir / "kube-proxy.yaml").write_text(json.dumps(proxy_config))
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.state_dir / 'kube-proxy.yaml'}"],
        )
        # kube-proxy is healthy once it has written the Services' rules.
        healthz = f"http://{proxy_config['healthzBindAddress']}/healthz"
        self._wait("kube-proxy to program the Services", lambda: _answers(healthz))

    def _node_ready(self) -> bool:
        with _core_api(self.plane.kubeconfig) as core:
            try:
                node = core.read_node(NODE_NAME)
            except client.ApiException:
                return False
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def _stop(self) -> None:
        """Removes the pods' containers and networks, then stops the node's processes."""
        if self._processes.get("kubelet") and self._processes["kubelet"].poll() is None:
            self._drain()
        for component in ("kube-proxy", "kube-scheduler", "kubelet"):
            self._terminate(component)
        # kube-proxy's chains would otherwise stay in the host's iptables.
        subprocess.run(
            [str(self.bin_dir / "kube-proxy"), "--cleanup", "--proxy-mode=iptables"],
            capture_output=True,
            check=False,
        )
        # What the kubelet did not take down (it was killed, or never got to it).
        runc_root = self.state_dir / "runc" / CRI_NAMESPACE
        if runc_root.is_dir():
            runc = [str(self.bin_dir / "runc"), f"--root={runc_root}"]
            for container in os.listdir(runc_root):
                subprocess.run(
                    [*runc, "delete", "--force", container], capture_output=True, check=False
                )
        self._terminate("containerd")
        for pid in _processes_running(self.bin_dir / "containerd-shim-runc-v2"):
            os.kill(pid, signal.SIGKILL)
        _unmount_below(self.state_dir)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        CRICTL_CONFIG.unlink(missing_ok=True)
        self._lock.release()

    def _clear_leftovers(self) -> None:
        """Ends what a node killed before its clean-up left running (a test session killed).

        Only one node runs at a time (NODE_LOCK, held here), so every process of the node's
        binaries and in the kubelet's pod cgroups is a leftover.
        """
        for binary in ("kube-proxy", "kube-scheduler", "kubelet", "containerd"):
            for pid in _processes_running(self.bin_dir / binary):
                os.kill(pid, signal.SIGKILL)
        pod_processes = Path("/sys/fs/cgroup/pids/kubepods")
        for procs in pod_processes.rglob("cgroup.procs") if pod_processes.is_dir() else ():
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    continue
        for pid in _processes_running(self.bin_dir / "containerd-shim-runc-v2"):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)

    def _drain(self) -> None:
        """Deletes every pod bound to the node and waits (bounded) for the kubelet to remove it."""
        with _core_api(self.plane.kubeconfig) as core:
            selector = f"spec.nodeName={NODE_NAME}"
            for pod in core.list_pod_for_all_namespaces(field_selector=selector).items:
                core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=1
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if not core.list_pod_for_all_namespaces(field_selector=selector).items:
                    return
                time.sleep(0.5)

    def _terminate(self, component: str) -> None:
        process = self._processes.pop(component, None)
        if process is not None:
            stop_process(process, grace_seconds=20)


def _output(
    tool: str, command: list[str], arguments: tuple[str, ...], input: bytes | None = None
) -> str:
    """What COMMAND (TOOL's program and options) with ARGUMENTS prints; NodeError if it fails."""
    result = subprocess.run([*command, *arguments], input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"{tool} {' '.join(arguments)}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


@contextmanager
def _core_api(kubeconfig: Path) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _processes_running(binary: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(binary):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _unmount_below(directory: Path) -> None:
    """Unmounts what the kubelet and containerd left mounted under DIRECTORY, deepest first."""
    prefix = str(directory.resolve()) + "/"
    mount_points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for mount_point in sorted(mount_points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
    shutil.rmtree(directory / "containerd-state", ignore_errors=True)

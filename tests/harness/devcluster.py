"""The local cluster of `make dev-up`: the control plane with a real node, and the images of
`make images` loaded into it, so that the chart or `tarscli self-code setup` get real pods.

    python -m tests.harness.devcluster up --state-dir .dev
    python -m tests.harness.devcluster down --state-dir .dev

`up` starts the control plane (tests.harness.controlplane) advertising the node's address, so
pods reach the API server at the `kubernetes` Service, then a detached process of this module
(`node`) that runs the node (tests.harness.node) for as long as the cluster is up. It holds
the machine's node lock all that time: tests that need the node fail at once, saying that
`make dev-down` frees it. The images go in under the names `make images` gave them and under
the chart's own (`tars-replica:<version>`), so the chart installs with its defaults.
`up` also prints the crictl command that lists the node's containers
(`node.crictl_command`).
`down` stops the node (its pods first, while the API server still answers), then the control
plane. The builds come from TARS_TOOLS_DIR, TARS_NODE_DIR and TARS_IMAGES_DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from pydantic import BaseModel

from tests.harness import controlplane, images, node
from tests.harness.credentials import write_private
from tests.harness.kubectl import REPOSITORY

CLI = "python -m tests.harness.devcluster"
NODE_COMPONENT = "node"
NODE_RECORD = "node.json"
# Starting the node takes up to node.READY_SECONDS twice (the node, kube-proxy); saving and
# importing both images takes minutes of its own.
NODE_READY_SECONDS = 900
# The node drains its pods (up to a minute) and gives each component time to exit.
NODE_STOP_SECONDS = 180


class DevNode(BaseModel):
    """The node `up` started, as its process records it once the images are in."""

    pid: int
    state_dir: Path
    images: list[str]


def load_node(state_dir: Path) -> DevNode | None:
    try:
        return DevNode.model_validate_json((state_dir / NODE_RECORD).read_text())
    except FileNotFoundError:
        return None


def node_running(state_dir: Path) -> bool:
    recorded = controlplane.recorded_process(state_dir, NODE_COMPONENT)
    return recorded is not None and controlplane.is_running(*recorded)


def up(
    state_dir: Path, tools_dir: Path, node_dir: Path, images_dir: Path
) -> tuple[controlplane.ControlPlane, DevNode]:
    """Starts the control plane and the node, or returns them where both are up already."""
    state_dir = state_dir.resolve()
    plane, running = controlplane.load(state_dir), load_node(state_dir)
    if (
        plane is not None
        and running is not None
        and controlplane.is_up(plane)
        and node_running(state_dir)
    ):
        return plane, running
    for problem in (node.missing_build(node_dir), images.missing_build(images_dir)):
        if problem:
            raise controlplane.DevClusterError(problem)
    # What an earlier `up` left half-running goes first: its node would hold the lock.
    down(state_dir)
    holder = node.current_holder()
    if holder is not None:
        raise controlplane.DevClusterError(node.node_busy_message(holder))
    plane = controlplane.up(state_dir, tools_dir, advertise_address=node.NODE_IP)
    try:
        return plane, _start_node(state_dir, node_dir, images_dir)
    except BaseException:
        down(state_dir)
        raise


def _start_node(state_dir: Path, node_dir: Path, images_dir: Path) -> DevNode:
    argv = [sys.executable, *CLI.split()[1:], NODE_COMPONENT, "--state-dir", str(state_dir)]
    argv += ["--node-dir", str(node_dir), "--images-dir", str(images_dir)]
    pid = controlplane.start_detached(state_dir, NODE_COMPONENT, argv, cwd=REPOSITORY)
    log = controlplane.log_file(state_dir, NODE_COMPONENT)
    deadline = time.monotonic() + NODE_READY_SECONDS
    while (running := load_node(state_dir)) is None:
        if not controlplane.is_running(pid, Path(sys.executable)):
            raise controlplane.DevClusterError(
                f"the node exited before it was ready; last lines of {log}:\n"
                + controlplane.log_tail(log)
            )
        if time.monotonic() > deadline:
            raise controlplane.DevClusterError(f"timed out waiting for the node (log: {log})")
        time.sleep(0.5)
    return running


def serve_node(state_dir: Path, node_dir: Path, images_dir: Path) -> None:
    """Runs the node until SIGTERM or SIGINT, with the images loaded; what `up` starts."""
    plane = controlplane.load(state_dir)
    if plane is None or not controlplane.is_up(plane):
        raise controlplane.DevClusterError(f"no control plane runs from {state_dir}")
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    holder = node.NodeHolder(
        pid=os.getpid(),
        purpose=f"`make dev-up` ({state_dir})",
        released_by=f"`make dev-down` (or `{CLI} down --state-dir {state_dir}`)",
    )
    # Not under STATE_DIR, which may be in a directory only its owner enters: the root
    # filesystems of pods with a user namespace of their own are in here.
    node_state = Path(tempfile.mkdtemp(prefix="tars-dev-node-"))
    node_state.chmod(0o755)
    try:
        # `up` found the node free; should another have taken it since, this fails at once.
        with node.ContainerNode(
            plane, node_dir, node_state, holder, wait_for_node=False
        ) as running:
            engine = images.Engine(images.load_build(images_dir))
            loaded = []
            for reference in (engine.build.operator, engine.build.replica):
                running.load_built_image(engine, reference)
                loaded += [reference, running.tag_unqualified(reference)]
            record = DevNode(pid=os.getpid(), state_dir=node_state, images=loaded)
            write_private(state_dir / NODE_RECORD, record.model_dump_json(indent=2) + "\n")
            print(f"node {node.NODE_NAME} ready with {', '.join(loaded)}", flush=True)
            # A bounded wait, so that the signal handler's flag is seen.
            while not stopping.wait(1):
                continue
    finally:
        (state_dir / NODE_RECORD).unlink(missing_ok=True)
        shutil.rmtree(node_state, ignore_errors=True)


def down(state_dir: Path) -> bool:
    """Stops the node, then the control plane (safe to repeat); returns whether anything ran."""
    state_dir = state_dir.resolve()
    node_stopped = controlplane.stop_recorded(
        state_dir, (NODE_COMPONENT,), grace_seconds=NODE_STOP_SECONDS
    )
    (state_dir / NODE_RECORD).unlink(missing_ok=True)
    return controlplane.down(state_dir) or node_stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=CLI, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", NODE_COMPONENT])
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where certificates, data, logs and pids live"
    )
    parser.add_argument("--node-dir", type=Path, help="the node's binaries (node: internal)")
    parser.add_argument("--images-dir", type=Path, help="the images' build (node: internal)")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "up":
            node_dir = controlplane.directory_from_env("TARS_NODE_DIR", "node")
            plane, running = up(
                arguments.state_dir,
                controlplane.directory_from_env(),
                node_dir,
                controlplane.directory_from_env("TARS_IMAGES_DIR", "images"),
            )
            print(
                f"control plane up at {plane.server} with node {node.NODE_NAME} "
                f"(images: {', '.join(running.images)}); export KUBECONFIG={plane.kubeconfig}"
            )
            print(f"the node's containers: {' '.join(node.crictl_command(node_dir))} ps")
        elif arguments.command == NODE_COMPONENT:
            if arguments.node_dir is None or arguments.images_dir is None:
                parser.error("node needs --node-dir and --images-dir")
            serve_node(arguments.state_dir.resolve(), arguments.node_dir, arguments.images_dir)
        elif down(arguments.state_dir):
            print(f"cluster in {arguments.state_dir} stopped")
        else:
            print(f"no cluster recorded in {arguments.state_dir}")
    except (controlplane.DevClusterError, node.NodeError) as error:
        print(f"dev cluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

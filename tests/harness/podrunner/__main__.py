"""The command line: `python -m tests.harness.podrunner --kubeconfig FILE` plays the kubelet
for one node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import urllib3
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.node import DEFAULT_NODE_NAME
from tests.harness.podrunner.runner import PodRunner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.podrunner",
        description="Play the kubelet for one node (test and dev use only).",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    parser.add_argument("--state-dir", type=Path, default=Path(".dev/podrunner"))
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not arguments.kubeconfig.is_file():
        parser.error(f"kubeconfig {arguments.kubeconfig} does not exist")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        runner = PodRunner(arguments.kubeconfig, arguments.state_dir.resolve(), arguments.node_name)
        runner.start()
    except (
        config.ConfigException,
        yaml.YAMLError,
        ApiException,
        urllib3.exceptions.HTTPError,
        OSError,
        subprocess.SubprocessError,
    ) as error:
        print(f"podrunner: cannot start: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())

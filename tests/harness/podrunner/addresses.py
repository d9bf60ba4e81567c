"""Pod addresses: the pod network delivered locally through lo (or the loopback network
when no route can be added), and a pool that hands its addresses out, one lock file per
address keeping runners of parallel test sessions apart."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

log = logging.getLogger("podrunner")

HOST_IP = "127.0.0.1"
# RFC 2544's benchmarking range: never used on real networks, and not refused by EndpointSlice
# validation the way loopback addresses are.
POD_NETWORK = IPv4Network("198.18.0.0/15")
LOOPBACK_NETWORK = IPv4Network("127.0.0.0/8")
ADDRESS_LOCK_DIR = Path(tempfile.gettempdir()) / "tars-podrunner-addresses"


def bindable(network: IPv4Network) -> bool:
    probe = socket.socket()
    try:
        probe.bind((str(network[2]), 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def route_locally(network: IPv4Network) -> bool:
    ip = shutil.which("ip")
    if ip is None:
        return False
    command = [ip, "route", "replace", "local", str(network), "dev", "lo"]
    return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0


def pod_network() -> IPv4Network:
    """POD_NETWORK once it is delivered locally, else the loopback network (see the module doc)."""
    if bindable(POD_NETWORK) or (route_locally(POD_NETWORK) and bindable(POD_NETWORK)):
        return POD_NETWORK
    log.warning(
        "cannot route %s to lo (needs CAP_NET_ADMIN): pods get 127.x addresses, "
        "which EndpointSlices refuse",
        POD_NETWORK,
    )
    return LOOPBACK_NETWORK


def listening_addresses() -> set[str]:
    """IPv4 addresses something listens on, e.g. a process left over by a killed test run."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # TCP_LISTEN
                packed = bytes.fromhex(local.split(":")[0])
                found.add(str(IPv4Address(int.from_bytes(packed, "little"))))
    return found


class AddressPool:
    """Hands out pod addresses round-robin, so a freed address is not reused at once.

    A lock file per address keeps runners in other processes (parallel test sessions) from
    handing out the same one; the kernel drops the lock when its holder dies.
    """

    def __init__(self, network: IPv4Network, lock_dir: Path = ADDRESS_LOCK_DIR) -> None:
        self._first = int(network[2])  # network[1] is 127.0.0.1 on the loopback network
        self._last = int(network[-2])
        self._next = self._first
        self._lock_dir = lock_dir
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allocate(self, preferred: str | None = None) -> str:
        """A free address: PREFERRED (a restarted runner keeps a pod's address) when possible."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if (
                preferred
                and self._first <= int(IPv4Address(preferred)) <= self._last
                and preferred not in self._held
                and self._claim(preferred)
            ):
                return preferred
            taken = listening_addresses()
            for _ in range(self._last - self._first + 1):
                address = str(IPv4Address(self._next))
                self._next = self._first if self._next >= self._last else self._next + 1
                if address not in self._held and address not in taken and self._claim(address):
                    return address
        raise RuntimeError("no free pod address left")

    def _claim(self, address: str) -> bool:
        descriptor = os.open(self._lock_dir / address, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._held[address] = descriptor
        return True

    def release(self, address: str) -> None:
        with self._lock:
            descriptor = self._held.pop(address, None)
        if descriptor is not None:
            os.close(descriptor)

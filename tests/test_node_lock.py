"""The node lock between real processes: a holder that keeps the node until told (`make
dev-up`) makes others fail at once, naming it; one that frees it by itself (a test session)
is waited for; a holder that writes no record (an older checkout) is named from the kernel's
list of locks. A lock file of the test's own, so the machine's node is not involved."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.harness.kubectl import REPOSITORY
from tests.harness.node import NodeBusyError, NodeHolder, NodeLock, current_holder, holding_node

# Holds the lock at argv[1] as the holder in argv[2], with its own pid, until its stdin
# closes, then writes argv[3] and frees the lock by exiting.
HOLDER_PROCESS = """
import os, sys
from pathlib import Path
from tests.harness.node import NodeHolder, holding_node
holder = NodeHolder.model_validate_json(sys.argv[2]).model_copy(update={"pid": os.getpid()})
with holding_node(holder, Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
    Path(sys.argv[3]).write_text("released")
"""
# Holds the lock at argv[1] the way an older checkout does: flock, and no record.
SILENT_HOLDER = ["sh", "-c", "echo held; cat >/dev/null"]


def hold(lock: Path, holder: NodeHolder, released: Path) -> subprocess.Popen[str]:
    """A process holding LOCK as HOLDER, with the process's own pid."""
    return _started(
        [sys.executable, "-c", HOLDER_PROCESS, str(lock), holder.model_dump_json(), str(released)]
    )


def hold_silently(lock: Path) -> subprocess.Popen[str]:
    return _started(["flock", str(lock), *SILENT_HOLDER])


def _started(argv: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        argv, cwd=REPOSITORY, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=60) == 0


def test_a_node_kept_until_dev_down_fails_others_at_once_naming_its_holder(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "node.lock"
    dev_up = NodeHolder(pid=0, purpose="`make dev-up` (/r/.dev)", released_by="`make dev-down`")
    holder = hold(lock, dev_up, tmp_path / "released")
    try:
        assert current_holder(lock) == dev_up.model_copy(update={"pid": holder.pid})
        other = NodeHolder(pid=os.getpid(), purpose="a test session")
        with pytest.raises(NodeBusyError) as busy, holding_node(other, lock):
            pytest.fail("the lock was taken while dev-up held it")
        assert str(busy.value) == (
            f"the node is held by `make dev-up` (/r/.dev) (pid {holder.pid}) until `make dev-down`"
        )
    finally:
        release(holder)
    assert current_holder(lock) is None
    assert lock.read_text() == "", "a freed lock keeps no record to be taken for its next holder"


def test_a_test_session_holding_the_node_is_waited_for(tmp_path: Path) -> None:
    lock, released = tmp_path / "node.lock", tmp_path / "released"
    session = NodeHolder(pid=0, purpose="a test session")
    holder = hold(lock, session, released)
    waiter = NodeHolder(pid=os.getpid(), purpose="the waiting session")
    seen: list[object] = []

    def take() -> None:
        with holding_node(waiter, lock):
            seen.append(released.read_text() if released.exists() else "taken while held")
            seen.append(current_holder(lock))

    taking = threading.Thread(target=take)
    try:
        assert current_holder(lock) == session.model_copy(update={"pid": holder.pid})
        taking.start()
    finally:
        release(holder)
    taking.join(timeout=60)
    # Inside, `current_holder` opens the file anew, and that descriptor's lock conflicts
    # with the waiter's own, so it reads the record the waiter wrote.
    assert seen == ["released", waiter]


def test_a_holder_that_wrote_no_record_is_named_from_the_kernels_list(tmp_path: Path) -> None:
    lock = tmp_path / "node.lock"
    silent = hold_silently(lock)
    try:
        found = current_holder(lock)
        assert found == NodeHolder(
            pid=silent.pid, purpose=f"`flock {lock} {' '.join(SILENT_HOLDER)}`"
        )
        with pytest.raises(NodeBusyError, match=f"pid {silent.pid}"):
            NodeLock(NodeHolder(pid=os.getpid(), purpose="dev-up"), lock, wait=False).acquire()
    finally:
        release(silent)


def test_a_record_left_by_an_earlier_holder_is_not_taken_for_the_current_one(
    tmp_path: Path,
) -> None:
    """A record whose pid is not the lock's owner in the kernel's list is stale."""
    lock = tmp_path / "node.lock"
    lock.write_text(NodeHolder(pid=1, purpose="dev-up", released_by="dev-down").model_dump_json())
    silent = hold_silently(lock)
    try:
        found = current_holder(lock)
        assert found is not None and (found.pid, found.released_by) == (silent.pid, None)
    finally:
        release(silent)

"""A hostile project's tests: each tries one way out of the test run's sandbox.

They write the user's tree by absolute path, write through `../` and by absolute path into
the tester's scratch directory, overwrite any cached snapshot they find, read the exported
MY_SECRET_TOKEN and the real HOME, connect to a port on loopback, and leave a process
behind in a session of its own, its command line carrying a marker to find it by.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import psutil

SECRET_VARIABLE = "MY_SECRET_TOKEN"
HOSTILE_TEST_COUNT = 6
HOSTILE_TEST_FILE = "tests/test_escapes.py"


def hostile_tests(original: Path, scratch: Path, port: int, marker: str) -> str:
    """A test module whose tests pass only if their escapes fail (the last one cannot tell)."""
    return textwrap.dedent(
        f"""\
        import os, pathlib, socket, subprocess, sys

        ORIGINAL = pathlib.Path({str(original.resolve())!r})
        SCRATCH = pathlib.Path({str(scratch.resolve())!r})
        REAL_HOME = pathlib.Path({str(Path.home())!r})


        def refused(write):
            try:
                write()
            except OSError:
                return True
            return False


        def test_cannot_write_the_users_tree():
            assert refused(lambda: (ORIGINAL / "owned.txt").write_text("owned"))
            for source in ORIGINAL.rglob("*.py"):
                assert refused(lambda: source.write_text("owned"))


        def test_cannot_plant_in_the_scratch_directory():
            assert refused(lambda: pathlib.Path("../../../planted.txt").write_text("x"))
            assert refused(lambda: (SCRATCH / "planted.txt").write_text("x"))


        def test_cannot_overwrite_another_runs_snapshot():
            archives = list(SCRATCH.rglob("*.tar.gz")) if SCRATCH.is_dir() else []
            for archive in archives:
                assert refused(lambda: archive.write_bytes(b"planted"))


        def test_sees_no_secret_and_no_real_home():
            assert "{SECRET_VARIABLE}" not in os.environ, os.environ["{SECRET_VARIABLE}"]
            assert pathlib.Path(os.environ["HOME"]) != REAL_HOME
            assert refused(lambda: (REAL_HOME / "planted.txt").write_text("x"))


        def test_cannot_reach_the_network():
            assert refused(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=10))


        def test_leaves_a_process_behind():
            subprocess.Popen(
                ["setsid", sys.executable, "-c", "import time; time.sleep(600)", "{marker}"],
                start_new_session=True,
            )
        """
    )


def leftovers(marker: str) -> list[psutil.Process]:
    """The live processes whose command line holds `marker`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in (process.info["cmdline"] or []) and process.info["status"] not in (
            psutil.STATUS_ZOMBIE,
            None,
        ):
            found.append(process)
    return found

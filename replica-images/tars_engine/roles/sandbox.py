"""The sandbox a test command runs in: bubblewrap (bwrap), and the environment it gets.

Inside bwrap the whole filesystem is read-only; only the run's own directory (its copy
of the project, a private /tmp and HOME) is writable, and while the tests' virtualenv is
being made, that virtualenv. The tester's scratch directory
(every other run and every cached snapshot) and the tester's HOME are hidden under empty
tmpfs mounts, with the interpreter the command needs bound back read-only. The command
gets fresh namespaces (no network unless the run opts in, its own PIDs) and dies with
the tester; when it ends, the PID namespace ends and takes every process left in it.

The environment is an allowlist whether bwrap runs or not: nothing the tester was
started with reaches the tests unless it is named.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from tars_api.vocabulary import SandboxMode

from tars_engine.core.models import SandboxUse

BWRAP = "bwrap"
BWRAP_PROBE_TIMEOUT_SECONDS = 30
INSTALL_HINT = "install Debian's bubblewrap (apt-get install bubblewrap)"
# What every command may see of the tester's environment: where programs are, and the locale.
ALLOWED_VARIABLES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ"})
ALLOWED_PREFIXES = ("LC_",)
VIRTUAL_ENV = "VIRTUAL_ENV"
VENV_CONFIG = "pyvenv.cfg"
PRIVATE_TMP = Path("/tmp")


class SandboxPolicy(BaseModel):
    """What one test command may touch."""

    model_config = ConfigDict(frozen=True)

    run_dir: Path
    """The only writable place: the project's copy, and `tmp` and `home` beside it."""
    workdir: Path
    private_tmp: Path
    hidden: tuple[Path, ...]
    """Directories replaced by an empty tmpfs: the scratch directory, the tester's HOME."""
    readable: tuple[Path, ...]
    """Directories under a hidden one bound back read-only: what the interpreter needs."""
    network: bool
    writable: tuple[Path, ...] = ()
    """Writable besides the run's directory: the virtualenv being made for the tests."""


def _ordered(paths: Iterable[Path]) -> list[Path]:
    # Parents before children: bwrap mounts in argument order, so a later mount lands on top.
    return sorted(set(paths), key=lambda path: (len(path.parts), str(path)))


def bwrap_argv(bwrap: str, policy: SandboxPolicy, command: list[str]) -> list[str]:
    """The bwrap command line that runs `command` under `policy`."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]
    if policy.network:
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session"]
    # /tmp first: a hidden directory under /tmp is then hidden inside the private one too.
    argv += ["--bind", str(policy.private_tmp), str(PRIVATE_TMP)]
    hiding = _ordered(policy.hidden)
    for hidden in hiding:
        argv += ["--tmpfs", str(hidden)]
    covering = (*policy.hidden, PRIVATE_TMP)
    for readable in _ordered(policy.readable):
        # Only what a hidden directory covers, and never a parent of one: that would undo it.
        covered = any(readable.is_relative_to(hidden) for hidden in covering)
        if covered and not any(hidden.is_relative_to(readable) for hidden in policy.hidden):
            argv += ["--ro-bind", str(readable), str(readable)]
    for writable in (policy.run_dir, *policy.writable):
        argv += ["--bind", str(writable), str(writable)]
    # Last, once every mount point in them exists: what hides the directories is read-only too.
    for hidden in hiding:
        argv += ["--remount-ro", str(hidden)]
    return [*argv, "--chdir", str(policy.workdir), "--", *command]


def venv_root(executable: Path) -> Path | None:
    """The virtualenv `executable` belongs to (its bin/ sits beside pyvenv.cfg), if any."""
    root = executable.absolute().parent.parent
    return root if (root / VENV_CONFIG).is_file() else None


def _venv_home(root: Path) -> Path | None:
    for line in (root / VENV_CONFIG).read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None


def _pth_directories(root: Path) -> list[Path]:
    """The directories a virtualenv's .pth files add to its path (editable installs, shared
    site-packages): the interpreter imports from them as from its own."""
    directories = []
    for pth in sorted(root.glob("lib/python3*/site-packages/*.pth")):
        for line in pth.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = Path(line.strip())
            # `import` lines run code; relative entries are inside site-packages already.
            if entry.is_absolute() and entry.is_dir():
                directories.append(entry)
    return directories


def interpreter_paths(executable: Path) -> list[Path]:
    """Directories a program needs to start: its prefix, and a virtualenv's base interpreter
    and the directories its .pth files name."""
    paths = [executable.resolve().parent.parent]
    root = venv_root(executable)
    if root is not None:
        paths.append(root)
        home = _venv_home(root)
        if home is not None:
            paths.append(home.resolve().parent)
        paths.extend(_pth_directories(root))
    return paths


def command_executable(command: list[str], path: str | None) -> Path | None:
    found = shutil.which(command[0], path=path) if command else None
    return Path(found) if found else None


def allowed_environment(
    source: Mapping[str, str], names: Iterable[str], executable: Path | None
) -> dict[str, str]:
    """The allowlisted part of `source`, plus the named variables and the command's virtualenv."""
    named = set(names)
    env = {
        key: value
        for key, value in source.items()
        if key in ALLOWED_VARIABLES or key.startswith(ALLOWED_PREFIXES) or key in named
    }
    root = venv_root(executable) if executable is not None else None
    if root is not None:
        env[VIRTUAL_ENV] = str(root)
        env["PATH"] = os.pathsep.join(filter(None, [str(root / "bin"), env.get("PATH")]))
    return env


@functools.cache
def bwrap_problem(bwrap: str) -> str | None:
    """Why bwrap cannot make a sandbox on this machine (a pod may forbid namespaces); None: it can."""
    try:
        probe = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
             "--die-with-parent", "--tmpfs", str(PRIVATE_TMP), "--", "true"],
            capture_output=True, timeout=BWRAP_PROBE_TIMEOUT_SECONDS, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} does not run: {exc}"
    if probe.returncode != 0:
        reason = probe.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return (
            f"{bwrap} cannot create namespaces here: {reason[-1] if reason else probe.returncode}"
        )
    return None


def find_bwrap(path: str | None) -> tuple[str | None, str]:
    """A working bwrap on `path` and its location, or None and why there is none."""
    found = shutil.which(BWRAP, path=path)
    if found is None:
        return None, f"bwrap is not on PATH ({INSTALL_HINT})"
    problem = bwrap_problem(found)
    return (None, problem) if problem else (found, found)


def sandbox_choice(
    mode: SandboxMode, network: bool, path: str | None
) -> tuple[str | None, SandboxUse]:
    """The bwrap to use (None: none) and how the run will say it was isolated."""
    if mode is SandboxMode.off:
        return None, SandboxUse(
            mode=mode, isolated=False, network=True, detail="no sandbox: the run turned it off"
        )
    bwrap, where = find_bwrap(path)
    if bwrap is None:
        if mode is SandboxMode.required:
            return None, SandboxUse(
                mode=mode, isolated=False, network=True, refused=True,
                detail=f"sandbox required, and {where}; no test ran",
            )  # fmt: skip
        return None, SandboxUse(
            mode=mode, isolated=False, network=True,
            detail=f"no sandbox: {where}; the tests ran with the tester's own permissions",
        )  # fmt: skip
    reach = "network allowed" if network else "no network"
    return bwrap, SandboxUse(
        mode=mode, isolated=True, network=network,
        detail=f"bwrap ({bwrap}): only the copy is writable, {reach}, no process outlives the run",
    )  # fmt: skip


def tester_hidden_paths(scratch_dir: Path) -> tuple[Path, ...]:
    """What a test command must not see: every run and snapshot, and the tester's HOME."""
    hidden = [scratch_dir.resolve()]
    home = Path.home().resolve()
    if home.is_dir() and home != Path(home.anchor):
        hidden.append(home)
    return tuple(hidden)

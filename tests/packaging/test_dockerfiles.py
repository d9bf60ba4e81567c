"""The images' Dockerfile, read as the builder reads it (no Docker engine is needed).

Every COPY source exists in the build context and survives .dockerignore, every
entrypoint is a console script of the distribution and accepts the arguments the
images and the chart give it, the runtime user is the fixed non-root uid the operator
and the chart assume, and base images are pinned.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from tars_operator.config import NON_ROOT_ID, OperatorConfig

from tests.harness.dockerfiles import Stage, ignore_rules, is_ignored, stages

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = REPOSITORY / "replica-images" / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE_SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
# The images the chart and the Tiltfile build: target stage -> console script it runs.
IMAGES = {"operator": "tars-operator", "replica": "tars-replica"}
# A tag with the exact patch version (3.11.14-slim-bookworm), or a digest.
PINNED_BASE = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def parsed() -> list[Stage]:
    return stages(DOCKERFILE)


def stage(parsed: list[Stage], name: str) -> Stage:
    found = [item for item in parsed if item.name == name]
    assert found, f"{DOCKERFILE} has no stage {name!r}; stages: {[s.name for s in parsed]}"
    return found[0]


def inherited(parsed: list[Stage], target: Stage) -> list[Stage]:
    """The target and the stages it is built FROM, nearest first."""
    chain = [target]
    names = {item.name: item for item in parsed if item.name}
    while chain[-1].base in names:
        chain.append(names[chain[-1].base])
    return chain


def effective(parsed: list[Stage], target: str, keyword: str) -> list[str] | str | None:
    for item in inherited(parsed, stage(parsed, target)):
        instruction = item.last(keyword)
        if instruction is not None:
            if keyword in ("ENTRYPOINT", "CMD"):
                return instruction.exec_form()
            return instruction.arguments
    return None


def test_every_copy_source_is_in_the_build_context(parsed: list[Stage]) -> None:
    rules = ignore_rules(DOCKERIGNORE)
    stage_names = {item.name for item in parsed if item.name}
    checked = 0
    for item in parsed:
        for instruction in item.all("COPY") + item.all("ADD"):
            flags, words = instruction.flags_and_words()
            sources = words[:-1]
            assert sources, f"line {instruction.line}: COPY without a source"
            if "from" in flags:
                assert flags["from"] in stage_names, (
                    f"line {instruction.line}: COPY --from={flags['from']} names no earlier stage"
                )
                continue
            for source in sources:
                path = REPOSITORY / source
                assert path.exists(), (
                    f"line {instruction.line}: COPY source {source} does not exist"
                )
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                kept = [
                    file
                    for file in files
                    if not is_ignored(file.relative_to(REPOSITORY).as_posix(), rules)
                ]
                assert kept, f"line {instruction.line}: .dockerignore excludes all of {source}"
                checked += 1
    assert checked >= 5


def test_copied_sources_are_the_distributions_packages(parsed: list[Stage]) -> None:
    """The build stage copies exactly the roots pyproject.toml builds packages from."""
    build = stage(parsed, "build")
    copied = {
        word.rstrip("/")
        for instruction in build.all("COPY")
        for word in instruction.flags_and_words()[1][:-1]
    }
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    package_dirs = {
        f"{root}/{name.rstrip('*')}"
        for root in find["where"]
        for name in find["include"]
        if (REPOSITORY / root / name.rstrip("*")).is_dir()
    }
    assert package_dirs <= copied, f"the build stage misses {sorted(package_dirs - copied)}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_dockerignore_keeps_local_state_out() -> None:
    rules = ignore_rules(DOCKERIGNORE)
    for path in (".venv/bin/python", ".git/HEAD", ".dev/kubeconfig", "examples/sample-project",
                 "replica-images/tars_engine/__pycache__/models.cpython-311.pyc"):  # fmt: skip
        assert is_ignored(path, rules), f"{path} would be sent to the builder"
    assert not is_ignored("replica-images/tars_engine/models.py", rules)


@pytest.mark.parametrize(("target", "script"), sorted(IMAGES.items()))
def test_entrypoint_is_a_console_script_of_the_distribution(
    parsed: list[Stage], target: str, script: str
) -> None:
    entrypoint = effective(parsed, target, "ENTRYPOINT")
    assert isinstance(entrypoint, list) and entrypoint, (
        f"stage {target} has no exec-form ENTRYPOINT"
    )
    assert entrypoint == [script]
    assert script in CONSOLE_SCRIPTS, f"{script} is not in [project.scripts] of pyproject.toml"
    installed = Path(sys.executable).parent / script
    assert installed.is_file(), f"{installed} missing: the distribution does not install {script}"


def test_replica_cmd_is_accepted_by_tars_replica(parsed: list[Stage]) -> None:
    """The default CMD parses: `--help` after it exits 0 only when every argument before it is valid."""
    command = effective(parsed, "replica", "CMD")
    assert isinstance(command, list) and command[0] == "serve"
    script = Path(sys.executable).parent / "tars-replica"
    result = subprocess.run(
        [str(script), *command, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--role" in result.stdout


def test_operator_image_has_no_cmd_the_chart_would_have_to_override(parsed: list[Stage]) -> None:
    assert effective(parsed, "operator", "CMD") is None


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_runtime_user_is_the_fixed_non_root_uid(parsed: list[Stage], target: str) -> None:
    user = effective(parsed, target, "USER")
    assert isinstance(user, str)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, (
        f"USER {user}: a numeric non-root uid lets runAsNonRoot verify it"
    )
    assert int(uid) == NON_ROOT_ID == OperatorConfig().run_as_user
    assert gid.isdigit() and int(gid) == OperatorConfig().run_as_group


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_healthcheck_probes_the_health_endpoint(parsed: list[Stage], target: str) -> None:
    healthcheck = effective(parsed, target, "HEALTHCHECK")
    assert isinstance(healthcheck, str)
    _, _, command = healthcheck.partition(" CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "the slim image has Python, not curl"
    compile(argv[2], f"{target} HEALTHCHECK", "exec")
    assert "/healthz" in argv[2]


def test_base_images_are_pinned(parsed: list[Stage]) -> None:
    names = {item.name for item in parsed if item.name}
    external = [item.base for item in parsed if item.base not in names]
    assert external
    for base in external:
        assert PINNED_BASE.match(base) and (":" in base or "@" in base), (
            f"base image {base} is not pinned to an exact version or digest"
        )
        assert not base.endswith(":latest")


def test_runtime_stages_do_not_inherit_the_build_tools(parsed: list[Stage]) -> None:
    """Multi-stage: the images start from the slim base and take only the virtualenv."""
    for target in IMAGES:
        chain = [item.name for item in inherited(parsed, stage(parsed, target))]
        assert "build" not in chain, f"stage {target} is built on the build stage: {chain}"
        copies = [
            instruction.flags_and_words()
            for item in inherited(parsed, stage(parsed, target))
            for instruction in item.all("COPY")
        ]
        assert copies and all("from" in flags for flags, _ in copies)


def test_replica_image_has_git_and_ruff(parsed: list[Stage]) -> None:
    installs = " ".join(
        instruction.arguments for instruction in stage(parsed, "replica").all("RUN")
    )
    assert re.search(r"apt-get install .*\bgit\b", installs), "the replica image needs git"
    dependencies = [
        re.split(r"[<>=~! \[]", item)[0] for item in PYPROJECT["project"]["dependencies"]
    ]
    assert "ruff" in dependencies, "ruff must come with the distribution the image installs"
    build = " ".join(instruction.arguments for instruction in stage(parsed, "build").all("RUN"))
    assert "ruff --version" in build


def test_replica_venv_has_the_pytest_the_tester_runs(parsed: list[Stage]) -> None:
    """The tester runs `python -m pytest` with its own interpreter (tars_engine.roles.tester)."""
    replica_venv_source = [
        instruction.flags_and_words()[0]["from"]
        for instruction in stage(parsed, "replica").all("COPY")
    ]
    assert replica_venv_source == ["build-replica"]
    installs = " ".join(i.arguments for i in stage(parsed, "build-replica").all("RUN"))
    arguments = " ".join(i.arguments for i in stage(parsed, "build-replica").all("ARG"))
    assert "pytest==${PYTEST_VERSION}" in installs
    pinned = re.search(r"PYTEST_VERSION=(\S+)", arguments)
    assert pinned and re.fullmatch(r"\d+\.\d+\.\d+", pinned.group(1))


def test_build_stage_context_builds_the_wheel_the_images_run(
    parsed: list[Stage], tmp_path: Path
) -> None:
    """The build stage, replayed without Docker: its COPYs alone build a wheel whose scripts work.

    The files are copied as the builder would (after .dockerignore), the wheel is built
    from that context only, and the console scripts are loaded from the installed wheel,
    not from this checkout.
    """
    rules = ignore_rules(DOCKERIGNORE)
    context = tmp_path / "context"
    for instruction in stage(parsed, "build").all("COPY"):
        _, words = instruction.flags_and_words()
        *sources, destination = words
        for source in sources:
            target = (
                context / destination / Path(source).name
                if destination.endswith("/")
                else context / destination
            )
            origin = REPOSITORY / source
            files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
            for file in files:
                relative = file.relative_to(REPOSITORY).as_posix()
                if file.is_file() and not is_ignored(relative, rules):
                    copy = target / file.relative_to(origin) if origin.is_dir() else target
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    copy.write_bytes(file.read_bytes())
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points_name,) = [name for name in names if name.endswith("entry_points.txt")]
        entry_points = archive.read(entry_points_name).decode()
    for package in ("tars_api", "tars_operator", "tarscli", "tars_engine"):
        assert f"{package}/__init__.py" in names, f"the wheel lacks {package}"
    assert not [name for name in names if "__pycache__" in name]
    for script, entry in CONSOLE_SCRIPTS.items():
        assert f"{script} = {entry}" in entry_points

    installed = tmp_path / "installed"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(installed), str(wheel)],
        check=True,
        timeout=300,
    )
    # The installed copy comes first on sys.path, ahead of this checkout's editable install.
    probe = (
        "import importlib, sys\n"
        "for target in sys.argv[2:]:\n"
        "    module, _, function = target.partition(':')\n"
        "    loaded = importlib.import_module(module)\n"
        "    assert loaded.__file__.startswith(sys.argv[1]), loaded.__file__\n"
        "    assert callable(getattr(loaded, function))\n"
    )
    subprocess.run(
        [sys.executable, "-c", probe, str(installed), *CONSOLE_SCRIPTS.values()],
        env={**os.environ, "PYTHONPATH": str(installed)},
        check=True,
        timeout=120,
    )

"""Operator configuration: YAML file, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tars_api.vocabulary import EngineName, Role
from tars_operator.config import ConfigError, OperatorConfig, load_config


def test_defaults_need_no_file() -> None:
    config = load_config(None, environ={})
    assert config == OperatorConfig()
    assert config.model == "llama3"
    assert config.engine is EngineName.static
    assert config.resources_for(Role.tester).limits["memory"] == "1Gi"


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(
        "image: example/tars:2\nmodel: qwen\nroles:\n  tester:\n    image: example/tester:2\n",
        encoding="utf-8",
    )
    config = load_config(
        path, environ={"TARS_OPERATOR_MODEL": "llama3.1", "TARS_OPERATOR_PORT": "9000"}
    )
    assert config.model == "llama3.1"
    assert config.port == 9000
    assert config.image_for(Role.tester) == "example/tester:2"
    assert config.image_for(Role.analyzer) == "example/tars:2"
    assert config.resources_for(Role.tester).requests == {}, (
        "a role entry replaces that role's defaults"
    )


def test_config_path_from_the_environment_and_camel_case_keys(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(
        "ollamaHost: http://ollama:11434\ncoordinatorServiceAccount: coord\n", encoding="utf-8"
    )
    config = load_config(None, environ={"TARS_OPERATOR_CONFIG": str(path)})
    assert (config.ollama_host, config.coordinator_service_account) == (
        "http://ollama:11434",
        "coord",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: 0\n", "port"),
        ("- a\n", "must be a mapping"),
        ("image: [\n", "not valid YAML"),
        ("roles:\n  janitor: {}\n", "roles.janitor"),
        ("ollamaHots: x\n", "ollamaHots"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path, environ={})
    assert "\n" not in str(raised.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read operator config"):
        load_config(tmp_path / "absent.yaml", environ={})

"""The worker roles in-process: what a local run hands the workflow."""

from __future__ import annotations

from tars_engine.core.role_set import RoleSet
from tars_engine.core.settings import ReplicaSettings
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator
from tars_engine.roles.tester import Tester


def local_roles(settings: ReplicaSettings | None = None) -> RoleSet:
    """Analyzer, generator and tester sharing one settings object (and so one scratch dir)."""
    settings = settings or ReplicaSettings.from_env()
    return RoleSet(
        analyzer=Analyzer(settings), generator=Generator(settings), tester=Tester(settings)
    )

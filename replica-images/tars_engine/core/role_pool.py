"""The workflow's role instances: where it finds them, and how it spreads work over them.

Each role may have several instances: work is handed to whichever instance is
idle, in turn, so as many files are in flight as there are instances.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tars_engine.core.role_set import AnalyzerRole, GeneratorRole, RoleSet, TesterRole
from tars_engine.core.workflow_errors import WorkflowError

LEASE_POLL_SECONDS = 0.5

RoleT = TypeVar("RoleT")

RoleSupply = Callable[[], Sequence[RoleT]]
"""The instances of a role ready now; asked at every lease, so scaled replicas are used at once."""


@dataclass(frozen=True)
class WorkerRoles:
    """Where the workflow finds each worker role's instances.

    `max_parallel` is None for a fixed set of instances, all used at once; a set that
    grows and shrinks mid-run (discovered replicas) runs each stage with up to
    `max_parallel` workers, each waiting for an idle instance.
    """

    analyzers: RoleSupply[AnalyzerRole]
    generators: RoleSupply[GeneratorRole]
    testers: RoleSupply[TesterRole]
    max_parallel: int | None = None

    @classmethod
    def of(cls, role_sets: Iterable[RoleSet]) -> WorkerRoles:
        sets = list(role_sets)
        if not sets:
            raise WorkflowError("no role instances available")
        analyzers = tuple(s.analyzer for s in sets)
        generators = tuple(s.generator for s in sets)
        testers = tuple(s.tester for s in sets)
        return cls(
            analyzers=lambda: analyzers, generators=lambda: generators, testers=lambda: testers
        )


class RolePool(Generic[RoleT]):
    """Lends idle role instances, longest-idle first: round-robin under load.

    Waiting for an instance (all busy, or none ready) calls `check` between polls, so
    a stop or a deadline ends the wait.
    """

    def __init__(self, supply: RoleSupply[RoleT], max_parallel: int | None) -> None:
        self._supply = supply
        self._max_parallel = max_parallel
        self._condition = threading.Condition()
        self._busy: set[int] = set()
        self._last_lease: dict[int, int] = {}
        self._leases = 0

    @property
    def parallelism(self) -> int:
        """Workers a stage runs with: every instance of a fixed set, else the ceiling."""
        return self._max_parallel or max(len(self._supply()), 1)

    @contextlib.contextmanager
    def lease(self, check: Callable[[], None]) -> Iterator[RoleT]:
        with self._condition:
            while True:
                idle = [role for role in self._supply() if id(role) not in self._busy]
                if idle:
                    role = min(idle, key=lambda r: self._last_lease.get(id(r), -1))
                    break
                check()
                self._condition.wait(timeout=LEASE_POLL_SECONDS)
            self._leases += 1
            self._busy.add(id(role))
            self._last_lease[id(role)] = self._leases
        try:
            yield role
        finally:
            with self._condition:
                self._busy.discard(id(role))
                self._condition.notify()

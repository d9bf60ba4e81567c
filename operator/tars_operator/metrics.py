"""Prometheus metrics of the operator: reconciles by kind and outcome, errors, durations."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "tars_operator_reconciles",
    "Reconciliations finished, by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "tars_operator_errors",
    "Reconciliations that raised, by kind and error type",
    ["kind", "error"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "tars_operator_api_requests",
    "Requests the reconcilers sent to the API server (kopf's own watches and patches aside)",
    ["verb", "code"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "tars_operator_reconcile_duration_seconds",
    "Wall-clock time of one reconciliation",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


class Outcome(enum.StrEnum):
    changed = "changed"
    """Something was written: children applied or status patched."""
    unchanged = "unchanged"
    """Everything already matched; nothing was written."""
    error = "error"


class ReconcileMeter:
    """Lets the measured block say whether it changed anything."""

    def __init__(self) -> None:
        self.outcome = Outcome.unchanged

    def changed(self, did_change: bool = True) -> None:
        if did_change:
            self.outcome = Outcome.changed


@contextmanager
def measure(kind: str) -> Iterator[ReconcileMeter]:
    """Count and time one reconciliation of `kind`; an exception counts as an error and propagates."""
    meter = ReconcileMeter()
    started = time.perf_counter()
    try:
        yield meter
    except BaseException as error:
        ERRORS.labels(kind=kind, error=type(error).__name__).inc()
        RECONCILES.labels(kind=kind, outcome=Outcome.error).inc()
        raise
    else:
        RECONCILES.labels(kind=kind, outcome=meter.outcome).inc()
    finally:
        DURATION.labels(kind=kind).observe(time.perf_counter() - started)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics on a background thread."""
    start_http_server(port, addr=address, registry=REGISTRY)

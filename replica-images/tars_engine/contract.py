"""Everything the operator needs from the engine, and nothing else.

The operator drives runs through a coordinator replica: it assigns a run
(`RunAssignment`), mirrors the coordinator's `RunReport` onto the run's status, keeps the
last checkpoint (`WorkflowState`) to resume from on another coordinator, and finds the
coordinator pods from their EndpointSlices. The import-linter contract in pyproject.toml
lets `tars_operator` import only this module and `tars_api`, so the engine's insides can
change without touching the operator.
"""

from tars_engine.cluster.discovery import slice_ready_urls
from tars_engine.cluster.run_api import (
    CoordinatorApiError,
    CoordinatorClient,
    RunAssignment,
    RunNotFoundError,
    RunReport,
)
from tars_engine.core.state import WorkflowState

__all__ = [
    "CoordinatorApiError",
    "CoordinatorClient",
    "RunAssignment",
    "RunNotFoundError",
    "RunReport",
    "WorkflowState",
    "slice_ready_urls",
]

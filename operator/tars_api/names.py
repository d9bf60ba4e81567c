"""Names that more than one component relies on, each defined once.

The operator writes them and the CLI, the engine or a user's `kubectl` reads them (or the
other way round), so a rename here is an API change: labels, the run's ConfigMaps and
their keys, and the environment a replica's container is started with.
"""

from __future__ import annotations

import enum

# --- labels (the recommended app.kubernetes.io set, plus the API group's own) -------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
PART_OF = "tars"
MANAGED_BY_OPERATOR = "tars-operator"
MANAGED_BY_CLI = "tarscli"
# Objects the CLI creates for a user (replicas, the coordinator's account, uploads).
CLI_LABELS: dict[str, str] = {LABEL_PART_OF: PART_OF, LABEL_MANAGED_BY: MANAGED_BY_CLI}
# The run an object belongs to: on the upload ConfigMap, and on the tester TarsReplica the
# operator makes for a run with a test image (kept out of the namespace's shared testers).
RUN_LABEL = "tars.dev/run"
# Set by Kubernetes on every EndpointSlice: the Service it belongs to.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# --- what the operator's children and the CLI's setup agree on --------------------------
# The port every replica serves its role's HTTP API on, and its Service exposes.
REPLICA_PORT = 8080
# The name of that port on the pods and Services (the service proxy and discovery use it).
REPLICA_PORT_NAME = "http"
# The coordinator's ServiceAccount: it alone reads the API (TarsReplica status, sources).
COORDINATOR_SERVICE_ACCOUNT = "tars-coordinator"
# The uid/gid the replicas run as, distroless' `nonroot` user: fixed so file ownership on
# volumes is predictable (the kind demo gives its project copy to it).
NON_ROOT_ID = 65532

# --- a run's own children, owned by the run ----------------------------------------------
# The tester TarsReplica of a run with a test image (and its Deployment and Service).
RUN_TESTER_SUFFIX = "-tester"
STATE_CONFIG_MAP_SUFFIX = "-state"
REPORT_CONFIG_MAP_SUFFIX = "-report"
# In `<run>-state`: the coordinator's address and its last checkpoint.
ADDRESS_KEY = "coordinator"
CHECKPOINT_KEY = "checkpoint.json"
# In `<run>-report`: the whole report and the patch of what passed.
REPORT_KEY = "report.json"
PATCH_KEY = "patch.diff"
# In the upload ConfigMap the CLI creates: the project archive.
DEFAULT_UPLOAD_KEY = "project.tar.gz"


def state_config_map(run_name: str) -> str:
    return run_name + STATE_CONFIG_MAP_SUFFIX


def report_config_map(run_name: str) -> str:
    return run_name + REPORT_CONFIG_MAP_SUFFIX


def run_tester(run_name: str) -> str:
    return run_name + RUN_TESTER_SUFFIX


class ReplicaEnv(enum.StrEnum):
    """The environment of a replica's container: set by the operator, read by the replica."""

    role = "TARS_ROLE"
    engine = "TARS_ENGINE"
    model = "TARS_MODEL"
    scratch_dir = "TARS_SCRATCH_DIR"
    ollama_host = "OLLAMA_HOST"
    ollama_num_ctx = "TARS_OLLAMA_NUM_CTX"
    # Read as Ollama's own server reads it: how many requests it answers at once.
    ollama_num_parallel = "OLLAMA_NUM_PARALLEL"
    host = "TARS_HOST"
    port = "TARS_PORT"
    # JSON map from a run's volume source key to where the volume is mounted (coordinator).
    volumes = "TARS_VOLUMES"
    # TARS_ENDPOINTS_<ROLE>: fixed worker endpoints instead of discovery (coordinator).
    endpoints_prefix = "TARS_ENDPOINTS_"
    # Caps on a project archive once extracted (tester snapshots, coordinator uploads).
    archive_max_entries = "TARS_ARCHIVE_MAX_ENTRIES"
    archive_max_bytes = "TARS_ARCHIVE_MAX_BYTES"
    # Seconds a git command reaching a remote may take before it is killed (coordinator).
    git_timeout_seconds = "TARS_GIT_TIMEOUT_SECONDS"
    pod_name = "POD_NAME"
    pod_namespace = "POD_NAMESPACE"
    pod_ip = "POD_IP"
    # Test-only, never set by the operator: "N:SIGNAL" makes a run send itself SIGNAL at its
    # Nth step boundary (tars_engine.core.crash_points), for the fault-injection test.
    kill_at = "TARS_TEST_KILL_AT"

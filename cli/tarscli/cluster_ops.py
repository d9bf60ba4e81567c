"""The cluster side of the commands: each a sequence of API calls that a command runs.

Installing the CRDs and waiting until they are Established; creating a replica unless
one of that name exists; waiting (a watch, not polling) until replicas are Ready; the
upload of a project with its run, undone step by step when a later step fails; finding
and following runs; reading an ended run's patch from its report ConfigMap. Live
progress and messages about state come from tarscli.views; failures a user can act on
are CliErrors with one line.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from tars_api.meta import ObjectMeta
from tars_api.names import (
    CLI_LABELS,
    DEFAULT_UPLOAD_KEY,
    PATCH_KEY,
    RUN_LABEL,
)
from tars_api.replica import TarsReplica
from tars_api.run import RunSource, SelfCodingRun, SelfCodingRunSpec, UploadSource

from tarscli import output, views
from tarscli.api_client import APPLY_PATCH, MERGE_PATCH, ApiError, Unreachable
from tarscli.errors import CliError, describe_failure, fail, report
from tarscli.kube import FIELD_MANAGER, Cluster, api_path, watch_events

if TYPE_CHECKING:
    # Only `start` makes an archive; the module loads the engine's file selection.
    from rich.console import Console

    from tarscli.upload import ProjectArchive

CREATED_AT_ANNOTATION = "tars.dev/created-at"
_NAME_ALPHABET = string.ascii_lowercase + string.digits
CRD_GROUP = "apiextensions.k8s.io"
# The check loads the model and times a short answer: slower than an API request.
MODEL_CHECK_TIMEOUT = (10.0, 300.0)
ENDPOINTS_WAIT_SECONDS = 30
# A run's name is also a label value (63 characters at most) and part of its children's names.
_NAME_PREFIX_LENGTH = 40

# --- CRDs and replicas ------------------------------------------------------------------------


def install_crds(cluster: Cluster, deadline: float) -> None:
    """Server-side apply the CRDs generated from the API models, then wait until Established."""
    # Imported here: generating the CRDs takes the schema machinery no other command needs.
    from tars_api.crdgen import crd_manifests

    manifests = crd_manifests()
    for manifest in manifests:
        cluster.api.request(
            "PATCH",
            api_path(
                "customresourcedefinitions", name=manifest["metadata"]["name"], group=CRD_GROUP
            ),
            params={"fieldManager": FIELD_MANAGER, "force": True},
            body=manifest,
            content_type=APPLY_PATCH,
        )
        typer.echo(f"customresourcedefinition/{manifest['metadata']['name']} applied")
    for manifest in manifests:
        _wait_established(cluster, manifest["metadata"]["name"], deadline)


def _is_established(crd: dict[str, Any]) -> bool:
    conditions = crd.get("status", {}).get("conditions") or []
    return any(
        item.get("type") == "Established" and item.get("status") == "True" for item in conditions
    )


def _wait_established(cluster: Cluster, name: str, deadline: float) -> None:
    # Without a resourceVersion the watch starts with the CRD as it is now.
    for _, crd in watch_events(
        cluster.api,
        api_path("customresourcedefinitions", group=CRD_GROUP),
        {"fieldSelector": f"metadata.name={name}"},
        None,
        max(1, round(deadline - time.monotonic())),
    ):
        if _is_established(crd):
            return
    raise CliError(f"customresourcedefinition/{name} was not Established in time")


def create_if_absent(cluster: Cluster, replica: TarsReplica) -> TarsReplica | None:
    """The replica as created, or None when one of its name exists already (left as it is)."""
    try:
        return cluster.replicas.create(replica)
    except ApiError as error:
        if error.status != 409:
            raise
        return None


def _ready(replica: TarsReplica | None) -> bool:
    return replica is not None and replica.is_ready


def wait_for_replicas(
    cluster: Cluster, replicas: list[TarsReplica], timeout: int, deadline: float
) -> None:
    """Follow the replicas (a watch, not polling) until all are Ready or `deadline` passes.

    `timeout` is the user's --timeout, which `deadline` was computed from.
    """
    latest: dict[str, TarsReplica | None] = {replica.name: replica for replica in replicas}
    with views.ReplicaProgress(output.console(), latest) as progress:
        for name, replica in latest.items():
            progress.show(name, replica)
        if all(_ready(item) for item in latest.values()):
            return
        for event, replica in cluster.replicas.watch(deadline=deadline):
            if replica.name not in latest:
                continue
            latest[replica.name] = None if event == "DELETED" else replica
            progress.show(replica.name, latest[replica.name])
            if all(_ready(item) for item in latest.values()):
                return
    waiting = ", ".join(
        f"{name} ({views.replica_state(item)})" for name, item in latest.items() if not _ready(item)
    )
    raise CliError(f"timed out after {timeout}s waiting for replicas to be Ready: {waiting}")


def model_report(cluster: Cluster, generator: TarsReplica, model: str | None) -> tuple[bool, str]:
    """Whether the generator's Ollama server has `model` (None: the generator's own), as
    the line `setup` prints. The generator answers through the API server's service proxy."""
    # Imported here: only `setup` asks a replica anything.
    from tars_engine.core.models import ModelCheck, ModelCheckRequest

    endpoints_deadline = time.monotonic() + ENDPOINTS_WAIT_SECONDS
    while True:
        try:
            check = cluster.call_replica(
                generator,
                "/v1/model-check",
                ModelCheckRequest(model=model),
                ModelCheck,
                timeout=MODEL_CHECK_TIMEOUT,
            )
            break
        except ApiError as error:
            # A pod is Ready a moment before its Service's endpoints list it.
            if error.status != 503 or time.monotonic() > endpoints_deadline:
                return False, _model_check_failure(generator, error)
            time.sleep(0.5)
        except Unreachable as error:
            return False, _model_check_failure(generator, error)
    if check.problem:
        return False, (
            f"the ollama engine cannot run here yet: {check.problem} (static runs are unaffected)"
        )
    return True, (
        f"Model {check.model} is ready on Ollama {check.server_version}: context "
        f"{check.num_ctx} of {check.context_length} tokens, {check.tokens_per_second} tokens/s."
    )


def _model_check_failure(generator: TarsReplica, error: Exception) -> str:
    return (
        f'cannot ask the generator replica "{generator.name}" about its model: '
        f"{describe_failure(error)}"
    )


# --- starting a run on an upload ----------------------------------------------------------------


def name_prefix(project: Path) -> str:
    """An RFC 1123 prefix for generateName, from the project directory's name."""
    cleaned = "".join(char if char in _NAME_ALPHABET else "-" for char in project.name.lower())
    cleaned = "-".join(part for part in cleaned.split("-") if part)[:_NAME_PREFIX_LENGTH].strip("-")
    return f"{cleaned or 'run'}-"


def upload_run(archive: ProjectArchive, targets: list[str], **spec: Any) -> SelfCodingRun:
    """A run (named by the server) of `targets` on the archive, in a ConfigMap named here.

    `spec` holds the other SelfCodingRun spec fields; those that are None are left out,
    so the API's defaults apply.
    """
    prefix = name_prefix(archive.root)
    config_map = f"{prefix}upload-{''.join(secrets.choice(_NAME_ALPHABET) for _ in range(5))}"
    return SelfCodingRun(
        metadata=ObjectMeta(
            generate_name=prefix,
            labels=dict(CLI_LABELS),
            annotations={
                CREATED_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="microseconds")
            },
        ),
        spec=SelfCodingRunSpec(
            targets=targets,
            source=RunSource(upload=UploadSource(config_map=config_map, key=DEFAULT_UPLOAD_KEY)),
            **{field: value for field, value in spec.items() if value is not None},
        ),
    )


def _delete_quietly(cluster: Cluster, config_map: str) -> None:
    """Best-effort cleanup on a failed start; the original failure is what the user needs to see."""
    try:
        cluster.api.request("DELETE", api_path("configmaps", cluster.namespace, config_map))
    except ApiError as error:
        report(f"could not delete configmap/{config_map} after the failed start: {error.reason}")


def upload_of(run: SelfCodingRun) -> UploadSource:
    """The upload source of a run that upload_run() built."""
    if run.spec.source.upload is None:
        raise ValueError("the run has no upload source; upload_run() builds one that has")
    return run.spec.source.upload


def create_with_upload(
    cluster: Cluster, run: SelfCodingRun, archive: ProjectArchive
) -> SelfCodingRun:
    """Upload the archive, create the run, then make the run own the upload.

    The upload comes first so the run never names a ConfigMap that is not there; when
    creating the run or taking ownership fails, what was created is deleted again.
    """
    upload = upload_of(run)
    config_map = upload.config_map
    config_maps = api_path("configmaps", cluster.namespace)
    cluster.api.request(
        "POST",
        config_maps,
        params={"fieldManager": FIELD_MANAGER},
        body={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map, "labels": dict(CLI_LABELS)},
            "binaryData": {upload.key: base64.b64encode(archive.data).decode("ascii")},
        },
    )
    try:
        created = cluster.runs.create(run)
    except BaseException:
        _delete_quietly(cluster, config_map)
        raise
    try:
        cluster.api.request(
            "PATCH",
            f"{config_maps}/{config_map}",
            params={"fieldManager": FIELD_MANAGER},
            body={
                "metadata": {
                    "ownerReferences": [created.owner_reference(controller=False).to_dict()],
                    "labels": {RUN_LABEL: created.name},
                }
            },
            content_type=MERGE_PATCH,
        )
    except BaseException:
        cluster.runs.delete(created.name)
        _delete_quietly(cluster, config_map)
        raise
    return created


# --- finding and following runs -----------------------------------------------------------------


def _creation_order(run: SelfCodingRun) -> tuple[datetime, str]:
    """creationTimestamp has second precision; runs started here also carry microseconds."""
    created = run.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)
    return created, run.metadata.annotations.get(CREATED_AT_ANNOTATION, "")


def latest_run(cluster: Cluster) -> SelfCodingRun:
    runs = cluster.runs.list()
    if not runs:
        raise CliError(
            f'no SelfCodingRun in namespace "{cluster.namespace}"; start one with "tarscli self-code start -t DIR"'
        )
    return max(runs, key=_creation_order)


def resolve_run(cluster: Cluster, name: str | None) -> SelfCodingRun:
    """The run named, or the latest in the namespace when no name is given."""
    return cluster.runs.get(name) if name is not None else latest_run(cluster)


def follow_run(
    cluster: Cluster, name: str, console: Console, current: SelfCodingRun | None = None
) -> SelfCodingRun | None:
    """Follow a run with a progress bar and a line per phase or stage change.

    `current`, the run as just read, spares the watch a list of its own.
    """
    last: SelfCodingRun | None = None
    with views.RunProgress(console, name) as progress:
        for event, run in cluster.runs.watch(name=name, current=current):
            if event == "DELETED":
                raise CliError(f'SelfCodingRun "{name}" was deleted while being watched')
            last = run
            progress.show(run)
            if run.is_terminal:
                break
    return last


def follow_documents(
    cluster: Cluster,
    name: str,
    output_format: output.OutputFormat,
    current: SelfCodingRun | None = None,
) -> None:
    """Print every new version of the run until it ends, as kubectl get -w -o json does."""
    for event, run in cluster.runs.watch(name=name, current=current):
        if event == "DELETED":
            raise CliError(f'SelfCodingRun "{name}" was deleted while being watched')
        output.print_document(output.document(run, SelfCodingRun), output_format)
        if run.is_terminal:
            return


def report_patch(cluster: Cluster, run: SelfCodingRun) -> str:
    """The accepted improvements of an ended run, from the ConfigMap it owns."""
    status = run.status
    if status is None or status.report_config_map is None:
        state = views.brief_phase(run)
        if run.is_terminal:
            fail(f"selfcodingrun/{run.name} ({state}) has no report ConfigMap")
        fail(f"selfcodingrun/{run.name} has not ended yet ({state}); its patch comes at the end")
    try:
        config_map = cluster.api.request(
            "GET", api_path("configmaps", cluster.namespace, status.report_config_map)
        )
    except ApiError as error:
        if error.status == 404:
            fail(f"configmap/{status.report_config_map} of selfcodingrun/{run.name} is gone")
        raise
    return str((config_map.get("data") or {}).get(PATCH_KEY, ""))

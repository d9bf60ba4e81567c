"""tarscli's watch against the real API server: it starts from the object just read, and
lists again when the server no longer has the version it would resume from (410 Gone)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client
from tars_api.meta import ObjectMeta
from tars_api.names import DEFAULT_UPLOAD_KEY
from tars_api.run import (
    RunPhase,
    RunSource,
    SelfCodingRun,
    SelfCodingRunSpec,
    UploadSource,
)
from tarscli.kube import connect

from tests.harness.cli import patch_status

pytestmark = pytest.mark.usefixtures("tars_crds")

RUNS = SelfCodingRun.resource.plural
WATCH_SECONDS = 60


def test_a_watch_from_a_version_the_server_forgot_lists_again(
    kubeconfig: Path, namespace: str, api_client: client.ApiClient
) -> None:
    cluster = connect(kubeconfig, None, namespace)
    run = cluster.runs.create(
        SelfCodingRun(
            metadata=ObjectMeta(name="watched"),
            spec=SelfCodingRunSpec(
                targets=["src"],
                source=RunSource(upload=UploadSource(config_map="u", key=DEFAULT_UPLOAD_KEY)),
            ),
        )
    )
    patch_status(api_client, namespace, RUNS, run.name, {"phase": "Running", "stage": "Analyzing"})
    # As after a long disconnection: the API server keeps no history back to version 1,
    # and answers a watch from there with 410 Gone.
    forgotten = run.model_copy(
        update={"metadata": run.metadata.model_copy(update={"resource_version": "1"})}
    )
    events = cluster.runs.watch(
        name=run.name, current=forgotten, deadline=time.monotonic() + WATCH_SECONDS
    )
    assert next(events) == ("ADDED", forgotten)
    event, relisted = next(events)
    assert event == "ADDED" and relisted.status is not None
    assert relisted.status.phase is RunPhase.running
    patch_status(api_client, namespace, RUNS, run.name, {"phase": "Succeeded", "stage": "Done"})
    event, changed = next(events)
    assert event == "MODIFIED" and changed.status is not None
    assert changed.status.phase is RunPhase.succeeded
    events.close()

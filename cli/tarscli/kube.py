"""Connecting to a cluster the way kubectl does, and typed access to the TARS objects.

`connect()` takes the options tarscli.options declares: `--kubeconfig` (else
`$KUBECONFIG`, else ~/.kube/config, else the in-cluster service account), `--context` and
`-n/--namespace` (else the context's namespace, else "default"). `Cluster.runs` and
`Cluster.replicas` read and write SelfCodingRun and TarsReplica objects as the API models,
and turn the API's "not found" answers into messages that say what is missing and how to
fix it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import pydantic
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tars_api.meta import GROUP, VERSION, ApiObject
from tars_api.replica import TarsReplica
from tars_api.run import SelfCodingRun

from tarscli.errors import CliError, api_status, one_line

DEFAULT_NAMESPACE = "default"
FIELD_MANAGER = "tarscli"
# (connect, read) seconds for ordinary requests: an unreachable server fails fast.
REQUEST_TIMEOUT = (10, 60)
# A watch is re-established after this many seconds (server side), as kubectl does.
WATCH_WINDOW_SECONDS = 300
TARS_KINDS: tuple[type[ApiObject], ...] = (TarsReplica, SelfCodingRun)
INSTALL_HINT = 'run "tarscli self-code setup --install-crds" or "kubectl apply -f crds/"'

ObjectT = TypeVar("ObjectT", bound=ApiObject)
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
WatchEvent = Literal["ADDED", "MODIFIED", "DELETED"]


def crds_missing_message(missing: list[str]) -> str:
    return f"the TARS CRDs are not installed in this cluster (missing {', '.join(missing)}); {INSTALL_HINT}"


def _check_kubeconfig_file(path: Path) -> None:
    """A one-line CliError unless `path` is UTF-8 YAML holding a mapping, as a kubeconfig is.

    The Kubernetes client would fail on such a file with a decoding, YAML or type error
    from deep inside its loader.
    """
    not_a_kubeconfig = f"the kubeconfig {path} is not a kubeconfig"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CliError(
            f"{not_a_kubeconfig}: byte {error.object[error.start]:#04x} at offset {error.start} "
            "is not UTF-8 text"
        ) from error
    except OSError as error:
        raise CliError(f"cannot read the kubeconfig {path}: {error.strerror}") from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise CliError(f"{not_a_kubeconfig}: not YAML ({where}{problem})") from error
    if document is not None and not isinstance(document, dict):
        raise CliError(
            f"{not_a_kubeconfig}: it holds a YAML {type(document).__name__}, not a mapping"
        )


def _kubeconfig_paths(explicit: Path | None) -> str | None:
    """The kubeconfig file list to load, or None for the in-cluster service account."""
    if explicit is not None:
        if not explicit.is_file():
            raise CliError(f"kubeconfig {explicit} does not exist or is not a file")
        return str(explicit)
    from_environment = os.environ.get("KUBECONFIG", "")
    if from_environment:
        candidates = [path for path in from_environment.split(os.pathsep) if path]
        if not any(Path(path).expanduser().is_file() for path in candidates):
            raise CliError(
                f"no kubeconfig found: KUBECONFIG names {from_environment}, which does not exist"
            )
        return from_environment
    home_config = Path("~/.kube/config").expanduser()
    if home_config.is_file():
        return str(home_config)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise CliError(
        f"no kubeconfig found at {home_config}; pass --kubeconfig FILE or set KUBECONFIG"
    )


def _context_namespace(kubeconfig: str, context: str | None) -> str | None:
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    if context is None:
        chosen = current
    else:
        chosen = next((entry for entry in contexts if entry.get("name") == context), None)
        if chosen is None:
            names = ", ".join(sorted(str(entry.get("name")) for entry in contexts)) or "none"
            raise CliError(f'context "{context}" is not in the kubeconfig (contexts: {names})')
    namespace = (chosen or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


@dataclass
class Cluster:
    """An API client bound to the namespace the command works in."""

    api_client: client.ApiClient
    namespace: str

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def extensions(self) -> client.ApiextensionsV1Api:
        return client.ApiextensionsV1Api(self.api_client)

    @property
    def runs(self) -> Resources[SelfCodingRun]:
        return Resources(self, SelfCodingRun)

    @property
    def replicas(self) -> Resources[TarsReplica]:
        return Resources(self, TarsReplica)

    def missing_crds(self) -> list[str]:
        """CRD names whose resources the API does not serve (discovery: no CRD read access needed)."""
        try:
            served = {
                resource.name
                for resource in self.custom.get_api_resources(GROUP, VERSION).resources
            }
        except ApiException as error:
            if error.status != 404:
                raise
            served = set()
        return [kind.resource.crd_name for kind in TARS_KINDS if kind.resource.plural not in served]

    def require_crds(self) -> None:
        missing = self.missing_crds()
        if missing:
            raise CliError(crds_missing_message(missing))

    def call_service(
        self,
        service: str,
        method: str,
        path: str,
        body: pydantic.BaseModel,
        answer: type[ModelT],
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> ModelT:
        """`method path` on the namespace's Service `service` (`NAME:PORT_NAME` for a named
        port) through the API server's service proxy: from outside the cluster, with the user's credentials and RBAC
        (`create` on `services/proxy`). An error answer raises ApiException."""
        _, url, headers, _, _ = self.api_client.param_serialize(
            method=method,
            resource_path=f"/api/v1/namespaces/{self.namespace}/services/{service}/proxy/"
            + path.lstrip("/"),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method,
            url,
            header_params=headers,
            body=body.model_dump(mode="json"),
            _request_timeout=timeout,
        )
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return answer.model_validate_json(data)


def connect(kubeconfig: Path | None, context: str | None, namespace: str | None) -> Cluster:
    """A client for the cluster the flags (or kubectl's defaults) point at."""
    config_files = _kubeconfig_paths(kubeconfig)
    if config_files is None:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        api_client = client.ApiClient(configuration)
        in_cluster_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        default_namespace = (
            in_cluster_namespace.read_text().strip() if in_cluster_namespace.is_file() else None
        )
    else:
        for path in config_files.split(os.pathsep):
            if path and Path(path).expanduser().is_file():
                _check_kubeconfig_file(Path(path).expanduser())
        try:
            default_namespace = _context_namespace(config_files, context)
            api_client = config.new_client_from_config(
                config_file=config_files, context=context, persist_config=False
            )
        # A mapping of the wrong shape (a list where a mapping belongs, a number for a
        # name) surfaces from the client's loader as one of these.
        except ConfigException as error:
            raise CliError(f"cannot use the kubeconfig {config_files}: {error}") from error
        except (TypeError, AttributeError, KeyError, ValueError) as error:
            reason = one_line(str(error)) or type(error).__name__
            raise CliError(
                f"cannot use the kubeconfig {config_files}: an entry is not what a kubeconfig "
                f"holds there ({reason})"
            ) from error
    return Cluster(
        api_client=api_client, namespace=namespace or default_namespace or DEFAULT_NAMESPACE
    )


class Resources(Generic[ObjectT]):
    """The objects of one TARS kind in the cluster's namespace, as API models."""

    def __init__(self, cluster: Cluster, kind: type[ObjectT]) -> None:
        self.cluster = cluster
        self.kind = kind
        self._info = kind.resource

    def _translate(self, error: ApiException, name: str | None) -> Exception:
        """A CliError for the 404s a user can fix; other errors pass through unchanged."""
        if error.status != 404:
            return error
        status = api_status(error)
        if not status:
            # Not even a Status: no API serves this path, so the kind is not installed.
            return CliError(crds_missing_message([self._info.crd_name]))
        details = status.get("details") or {}
        if (
            name is not None
            and details.get("name") == name
            and details.get("kind") == self._info.plural
        ):
            return CliError(
                f'{self._info.kind} "{name}" not found in namespace "{self.cluster.namespace}"'
            )
        return error

    def _call(self, operation: str, name: str | None, **arguments: Any) -> Any:
        method = getattr(self.cluster.custom, operation)
        try:
            return method(
                GROUP,
                VERSION,
                self.cluster.namespace,
                self._info.plural,
                _request_timeout=REQUEST_TIMEOUT,
                **({"name": name} if name is not None else {}),
                **arguments,
            )
        except ApiException as error:
            raise self._translate(error, name) from error

    def parse(self, raw: dict[str, Any]) -> ObjectT:
        return self.kind.model_validate(raw)

    def get(self, name: str) -> ObjectT:
        return self.parse(self._call("get_namespaced_custom_object", name))

    def list(self, label_selector: str | None = None) -> list[ObjectT]:
        arguments = {"label_selector": label_selector} if label_selector else {}
        answer = self._call("list_namespaced_custom_object", None, **arguments)
        return [self.parse(item) for item in answer.get("items", [])]

    def create(self, obj: ObjectT) -> ObjectT:
        body = obj.to_k8s()
        body["metadata"]["namespace"] = self.cluster.namespace
        created = self._call(
            "create_namespaced_custom_object", None, body=body, field_manager=FIELD_MANAGER
        )
        return self.parse(created)

    def merge_patch(self, name: str, patch: dict[str, Any]) -> ObjectT:
        patched = self._call(
            "patch_namespaced_custom_object",
            name,
            body=patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
        return self.parse(patched)

    def delete(self, name: str) -> None:
        self._call("delete_namespaced_custom_object", name)

    def watch(
        self, *, name: str | None = None, deadline: float | None = None
    ) -> Iterator[tuple[WatchEvent, ObjectT]]:
        """The current state of the objects (all, or `name`), then every change, as it happens.

        The current state comes as ADDED events. The watch is resumed from the last
        resourceVersion when the server ends it, and re-listed when that version
        has expired (410 Gone). `deadline` (time.monotonic()) ends the iteration.
        """
        only_name = {"field_selector": f"metadata.name={name}"} if name is not None else {}
        resource_version: str | None = None
        while deadline is None or time.monotonic() < deadline:
            if resource_version is None:
                listed = self._call("list_namespaced_custom_object", None, **only_name)
                resource_version = listed["metadata"]["resourceVersion"]
                yield from (("ADDED", self.parse(item)) for item in listed.get("items", []))
            window = WATCH_WINDOW_SECONDS
            if deadline is not None:
                window = max(1, min(window, round(deadline - time.monotonic())))
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.cluster.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.cluster.namespace,
                    self._info.plural,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=window,
                    _request_timeout=(REQUEST_TIMEOUT[0], window + 30),
                    **only_name,
                ):
                    raw = event["raw_object"]
                    resource_version = raw.get("metadata", {}).get(
                        "resourceVersion", resource_version
                    )
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        yield event["type"], self.parse(raw)
            except ApiException as error:
                if error.status != 410:
                    raise self._translate(error, None) from error
                resource_version = None
            finally:
                watcher.stop()

"""Where the cluster is and who the user is, found the way kubectl finds them.

`load()` reads `--kubeconfig` (else `$KUBECONFIG`, a list of files merged as kubectl
merges them: the first file to name a cluster, user or context wins, and the first
current-context set), else ~/.kube/config, else the in-cluster service account. It
resolves the context (`--context`, else the current one) into an `Endpoint`: the server,
how to trust it (certificate-authority[-data], insecure-skip-tls-verify, tls-server-name),
the client's credentials (client-certificate[-data] and client-key[-data], token,
tokenFile, username and password, or an exec plugin's ExecCredential) and the context's
namespace. Relative paths in a file are relative to that file's directory. Every problem
with a file is a one-line CliError that names it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from tarscli.api_client import ClientCertificate, Endpoint
from tarscli.errors import CliError, one_line

IN_CLUSTER_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_INFO_VARIABLE = "KUBERNETES_EXEC_INFO"


class KubeconfigEntry(BaseModel):
    """A part of a kubeconfig file: kebab-case keys as kubectl writes them, others ignored.

    Validators are built on first use: most commands never read an ExecCredential.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True, defer_build=True)


class ClusterEntry(KubeconfigEntry):
    server: str
    certificate_authority: str | None = Field(default=None, alias="certificate-authority")
    certificate_authority_data: str | None = Field(default=None, alias="certificate-authority-data")
    insecure_skip_tls_verify: bool = Field(default=False, alias="insecure-skip-tls-verify")
    tls_server_name: str | None = Field(default=None, alias="tls-server-name")
    proxy_url: str | None = Field(default=None, alias="proxy-url")


class ExecEnvVar(KubeconfigEntry):
    name: str
    value: str


class ExecConfig(KubeconfigEntry):
    """A credential plugin (client.authentication.k8s.io): a command that prints an ExecCredential."""

    api_version: str = Field(alias="apiVersion")
    command: str
    args: list[str] | None = None
    env: list[ExecEnvVar] | None = None
    provide_cluster_info: bool = Field(default=False, alias="provideClusterInfo")
    install_hint: str | None = Field(default=None, alias="installHint")


class UserEntry(KubeconfigEntry):
    token: str | None = None
    token_file: str | None = Field(default=None, alias="tokenFile")
    username: str | None = None
    password: str | None = None
    client_certificate: str | None = Field(default=None, alias="client-certificate")
    client_certificate_data: str | None = Field(default=None, alias="client-certificate-data")
    client_key: str | None = Field(default=None, alias="client-key")
    client_key_data: str | None = Field(default=None, alias="client-key-data")
    exec_plugin: ExecConfig | None = Field(default=None, alias="exec")
    auth_provider: dict[str, Any] | None = Field(default=None, alias="auth-provider")


class ContextEntry(KubeconfigEntry):
    cluster: str
    user: str = ""
    namespace: str | None = None


class NamedCluster(KubeconfigEntry):
    name: str
    cluster: ClusterEntry


class NamedUser(KubeconfigEntry):
    name: str
    user: UserEntry = Field(default_factory=UserEntry)


class NamedContext(KubeconfigEntry):
    name: str
    context: ContextEntry


class KubeconfigFile(KubeconfigEntry):
    clusters: list[NamedCluster] | None = None
    users: list[NamedUser] | None = None
    contexts: list[NamedContext] | None = None
    current_context: str | None = Field(default=None, alias="current-context")


class ExecCredentialStatus(KubeconfigEntry):
    token: str | None = None
    client_certificate_data: str | None = Field(default=None, alias="clientCertificateData")
    client_key_data: str | None = Field(default=None, alias="clientKeyData")


class ExecCredential(KubeconfigEntry):
    status: ExecCredentialStatus = Field(default_factory=ExecCredentialStatus)


@dataclass(frozen=True)
class _Entries:
    """The merged maps of one or more files; each entry's paths already resolved."""

    clusters: dict[str, ClusterEntry]
    users: dict[str, UserEntry]
    contexts: dict[str, ContextEntry]
    current_context: str | None


def kubeconfig_paths(explicit: Path | None) -> list[Path] | None:
    """The kubeconfig files to merge, or None for the in-cluster service account."""
    if explicit is not None:
        if not explicit.is_file():
            raise CliError(f"kubeconfig {explicit} does not exist or is not a file")
        return [explicit]
    from_environment = os.environ.get("KUBECONFIG", "")
    if from_environment:
        existing = [
            Path(path).expanduser()
            for path in from_environment.split(os.pathsep)
            if path and Path(path).expanduser().is_file()
        ]
        if not existing:
            raise CliError(
                f"no kubeconfig found: KUBECONFIG names {from_environment}, which does not exist"
            )
        return existing
    home_config = Path("~/.kube/config").expanduser()
    if home_config.is_file():
        return [home_config]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise CliError(
        f"no kubeconfig found at {home_config}; pass --kubeconfig FILE or set KUBECONFIG"
    )


def _read_document(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or a one-line CliError saying why it is not a kubeconfig."""
    # Imported here: only commands that reach a cluster read YAML.
    import yaml

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
    if document is None:
        raise CliError(f"cannot use the kubeconfig {path}: the file is empty")
    if not isinstance(document, dict):
        raise CliError(
            f"{not_a_kubeconfig}: it holds a YAML {type(document).__name__}, not a mapping"
        )
    return document


def _relative_to(directory: Path, path: str | None) -> str | None:
    return None if path is None else str(directory / Path(path).expanduser())


def _parse_file(path: Path) -> KubeconfigFile:
    document = _read_document(path)
    try:
        parsed = KubeconfigFile.model_validate(document)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise CliError(
            f"cannot use the kubeconfig {path}: an entry is not what a kubeconfig holds there "
            f"({where}: {one_line(problem['msg'])})"
        ) from None
    directory = path.parent
    clusters = [
        entry.model_copy(
            update={
                "cluster": entry.cluster.model_copy(
                    update={
                        "certificate_authority": _relative_to(
                            directory, entry.cluster.certificate_authority
                        )
                    }
                )
            }
        )
        for entry in parsed.clusters or []
    ]
    users = []
    for named in parsed.users or []:
        user = named.user
        plugin = user.exec_plugin
        if plugin is not None and "/" in plugin.command:
            plugin = plugin.model_copy(update={"command": _relative_to(directory, plugin.command)})
        resolved = user.model_copy(
            update={
                "token_file": _relative_to(directory, user.token_file),
                "client_certificate": _relative_to(directory, user.client_certificate),
                "client_key": _relative_to(directory, user.client_key),
                "exec_plugin": plugin,
            }
        )
        users.append(named.model_copy(update={"user": resolved}))
    return parsed.model_copy(update={"clusters": clusters, "users": users})


def _merge(paths: list[Path]) -> _Entries:
    clusters: dict[str, ClusterEntry] = {}
    users: dict[str, UserEntry] = {}
    contexts: dict[str, ContextEntry] = {}
    current: str | None = None
    for path in paths:
        parsed = _parse_file(path)
        for named_cluster in parsed.clusters or []:
            clusters.setdefault(named_cluster.name, named_cluster.cluster)
        for named_user in parsed.users or []:
            users.setdefault(named_user.name, named_user.user)
        for named_context in parsed.contexts or []:
            contexts.setdefault(named_context.name, named_context.context)
        current = current or parsed.current_context or None
    return _Entries(clusters, users, contexts, current)


def _file_or_data(path: str | None, data: str | None, what: str) -> bytes | None:
    """The bytes a `what` / `what-data` pair of keys gives: data (base64) wins, as in kubectl."""
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as error:
            raise CliError(f"the kubeconfig's {what}-data is not base64: {error}") from error
    if path:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise CliError(
                f"cannot read the kubeconfig's {what} {path}: {error.strerror}"
            ) from error
    return None


def _run_exec_plugin(plugin: ExecConfig, cluster: ClusterEntry) -> ExecCredentialStatus:
    """The credentials a client.authentication.k8s.io plugin prints on stdout."""
    spec: dict[str, Any] = {"interactive": sys.stdin.isatty()}
    if plugin.provide_cluster_info:
        spec["cluster"] = {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
            "insecure-skip-tls-verify": cluster.insecure_skip_tls_verify,
            "tls-server-name": cluster.tls_server_name,
        }
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec}
    environment = {
        **os.environ,
        **{variable.name: variable.value for variable in plugin.env or []},
        EXEC_INFO_VARIABLE: json.dumps(info),
    }
    try:
        # The plugin's stderr and stdin stay the user's: plugins ask for logins there.
        completed = subprocess.run(
            [plugin.command, *(plugin.args or [])],
            env=environment,
            stdout=subprocess.PIPE,
            check=False,
        )
    except OSError as error:
        hint = f" ({one_line(plugin.install_hint)})" if plugin.install_hint else ""
        raise CliError(
            f"cannot run the kubeconfig's exec plugin {plugin.command}: {error.strerror}{hint}"
        ) from error
    if completed.returncode != 0:
        raise CliError(
            f"the kubeconfig's exec plugin {plugin.command} failed (exit {completed.returncode})"
        )
    try:
        return ExecCredential.model_validate_json(completed.stdout).status
    except pydantic.ValidationError as error:
        raise CliError(
            f"the kubeconfig's exec plugin {plugin.command} printed no ExecCredential: "
            f"{one_line(str(error.errors()[0]['msg']))}"
        ) from None


def _credentials(
    user: UserEntry, cluster: ClusterEntry
) -> tuple[dict[str, str], ClientCertificate | None]:
    """The Authorization header and the client certificate the user's entry gives."""
    if user.auth_provider is not None:
        raise CliError(
            f"the kubeconfig's auth-provider {user.auth_provider.get('name', '')!r} is not "
            "supported (kubectl dropped auth providers too); use an exec plugin"
        )
    token = user.token
    certificate = _file_or_data(
        user.client_certificate, user.client_certificate_data, "client-certificate"
    )
    key = _file_or_data(user.client_key, user.client_key_data, "client-key")
    if user.exec_plugin is not None and not (token or certificate):
        issued = _run_exec_plugin(user.exec_plugin, cluster)
        token = issued.token
        if issued.client_certificate_data and issued.client_key_data:
            certificate = issued.client_certificate_data.encode()
            key = issued.client_key_data.encode()
    if not token and user.token_file:
        try:
            token = Path(user.token_file).read_text().strip()
        except OSError as error:
            raise CliError(
                f"cannot read the kubeconfig's tokenFile {user.token_file}: {error.strerror}"
            ) from error
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user.username is not None and user.password is not None:
        pair = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    if (certificate is None) != (key is None):
        raise CliError("the kubeconfig's user has a client certificate or key without the other")
    client_certificate = (
        ClientCertificate(certificate, key) if certificate is not None and key is not None else None
    )
    return headers, client_certificate


def _from_files(paths: list[Path], context: str | None) -> Endpoint:
    shown = os.pathsep.join(str(path) for path in paths)
    entries = _merge(paths)
    chosen_name = context or entries.current_context
    if chosen_name is None:
        raise CliError(
            f"cannot use the kubeconfig {shown}: it sets no current-context; pass --context NAME"
        )
    chosen = entries.contexts.get(chosen_name)
    if chosen is None:
        if context is None:
            raise CliError(
                f'cannot use the kubeconfig {shown}: its current-context "{chosen_name}" is not '
                "one of its contexts"
            )
        names = ", ".join(sorted(entries.contexts)) or "none"
        raise CliError(f'context "{context}" is not in the kubeconfig (contexts: {names})')
    cluster = entries.clusters.get(chosen.cluster)
    if cluster is None:
        raise CliError(
            f'cannot use the kubeconfig {shown}: context "{chosen_name}" names the cluster '
            f'"{chosen.cluster}", which it does not define'
        )
    if cluster.proxy_url:
        raise CliError(
            f"cannot use the kubeconfig {shown}: the cluster's proxy-url is not supported; "
            "reach the server directly"
        )
    # A context may name no user, or one not defined: kubectl then sends no credentials.
    headers, client_certificate = _credentials(entries.users.get(chosen.user, UserEntry()), cluster)
    ca = _file_or_data(
        cluster.certificate_authority, cluster.certificate_authority_data, "certificate-authority"
    )
    return Endpoint(
        server=cluster.server.rstrip("/"),
        namespace=chosen.namespace or None,
        ca_certificates=ca.decode("ascii", errors="replace") if ca is not None else None,
        insecure=cluster.insecure_skip_tls_verify,
        tls_server_name=cluster.tls_server_name,
        client_certificate=client_certificate,
        headers=headers,
    )


def _in_cluster() -> Endpoint:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    try:
        token = (IN_CLUSTER_ACCOUNT / "token").read_text().strip()
        ca = (IN_CLUSTER_ACCOUNT / "ca.crt").read_text()
    except OSError as error:
        raise CliError(
            f"no kubeconfig, and the pod's service account cannot be read: {error}"
        ) from error
    namespace_file = IN_CLUSTER_ACCOUNT / "namespace"
    return Endpoint(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        namespace=namespace_file.read_text().strip() if namespace_file.is_file() else None,
        ca_certificates=ca,
        headers={"Authorization": f"Bearer {token}"},
    )


def load(kubeconfig: Path | None, context: str | None) -> Endpoint:
    """The endpoint of the context the flags (or kubectl's defaults) choose."""
    paths = kubeconfig_paths(kubeconfig)
    return _in_cluster() if paths is None else _from_files(paths, context)

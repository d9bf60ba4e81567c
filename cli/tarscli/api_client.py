"""Requests to the Kubernetes API server over the standard library's HTTP client.

The commands make a few plain REST calls on JSON documents, so they need neither the
`kubernetes` package's generated models nor its urllib3 pool, whose imports took most of
a command's time. `ApiClient.request` sends one JSON request on a kept-alive connection,
`ApiClient.send` one whose body or answer may be anything (a replica's, through the
service proxy); `ApiClient.stream` reads a watch (`?watch=1`), one JSON event a line, on a
connection of its own. A non-2xx answer raises `ApiError` with the server's Status; a
server that cannot be reached raises `Unreachable`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    import ssl

# (connect, read) seconds for ordinary requests: an unreachable server fails fast.
REQUEST_TIMEOUT = (10.0, 60.0)
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass(frozen=True)
class ClientCertificate:
    """PEM text of the client's certificate and key (files are read, data decoded)."""

    certificate: bytes
    key: bytes


@dataclass(frozen=True)
class Endpoint:
    """Everything a request to the API server needs (tarscli.kubeconfig finds it)."""

    server: str
    namespace: str | None
    ca_certificates: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    client_certificate: ClientCertificate | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """One answer as the server sent it."""

    status: int
    reason: str
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class ApiError(Exception):
    """A non-2xx answer: its status code, reason phrase and body (a Status, or plain text)."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def status_object(self) -> dict[str, Any]:
        """The `Status` object the API server sent, or {} when the body is not one."""
        try:
            body = json.loads(self.body)
        except ValueError:
            return {}
        return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


class Unreachable(Exception):
    """No answer from the server: it refused the connection, TLS failed, or it timed out."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"{server}: {reason}")
        self.server = server
        self.reason = reason


class _TlsConnection(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked against `server_hostname` (kubeconfig's tls-server-name)."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        tls: ssl.SSLContext,
        server_hostname: str,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self._tls = tls
        self._server_hostname = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_hostname)


def _tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    # Imported here: a plain-HTTP server (a test's, a proxy's) needs no TLS.
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if endpoint.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif endpoint.ca_certificates is not None:
        # As kubectl: a cluster's own CA replaces the system's roots.
        context.load_verify_locations(cadata=endpoint.ca_certificates)
    else:
        context.load_default_certs()
    if endpoint.client_certificate is not None:
        _load_client_certificate(context, endpoint.client_certificate)
    return context


def _load_client_certificate(context: ssl.SSLContext, certificate: ClientCertificate) -> None:
    """ssl reads a certificate and key only from files: they exist, owner-only, for the call."""
    with tempfile.TemporaryDirectory(prefix="tarscli-") as directory:
        certificate_file = os.path.join(directory, "client.crt")
        key_file = os.path.join(directory, "client.key")
        for path, data in (
            (certificate_file, certificate.certificate),
            (key_file, certificate.key),
        ):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as stream:
                stream.write(data)
        context.load_cert_chain(certificate_file, key_file)


class ApiClient:
    """Requests to one API server with one user's credentials."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        parts = urlsplit(endpoint.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unreachable(endpoint.server, "the server is not an http:// or https:// URL")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._tls: ssl.SSLContext | None = None
        self._connection: http.client.HTTPConnection | None = None

    @property
    def server(self) -> str:
        return self.endpoint.server

    def _open(self, timeout: tuple[float, float]) -> http.client.HTTPConnection:
        connect_timeout, read_timeout = timeout
        connection: http.client.HTTPConnection
        if self._scheme == "https":
            if self._tls is None:
                try:
                    self._tls = _tls_context(self.endpoint)
                except OSError as error:  # ssl.SSLError among them
                    raise Unreachable(
                        self.server,
                        f"the kubeconfig's certificates cannot be used ({_reason(error)})",
                    ) from error
            connection = _TlsConnection(
                self._host,
                self._port,
                tls=self._tls,
                server_hostname=self.endpoint.tls_server_name or self._host,
                timeout=connect_timeout,
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            raise Unreachable(self.server, _reason(error)) from error
        if connection.sock is not None:
            connection.sock.settimeout(read_timeout)
        return connection

    def _target(self, path: str, params: Mapping[str, str | int | bool] | None) -> str:
        query = {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in (params or {}).items()
        }
        return self._base_path + path + (f"?{urlencode(query)}" if query else "")

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": JSON, "User-Agent": "tarscli", **self.endpoint.headers}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        """`method path?params` with `body` as JSON; the decoded answer, or ApiError."""
        payload = None if body is None else json.dumps(body).encode()
        answer = self.send(
            method, path, params=params, payload=payload, content_type=content_type, timeout=timeout
        )
        text = answer.text
        return json.loads(text) if text else None

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        payload: bytes | None = None,
        content_type: str = JSON,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Answer:
        """`method path?params` with `payload` as it is; the 2xx answer undecoded, or ApiError."""
        headers = self._headers(content_type if payload is not None else None)
        target = self._target(path, params)
        while True:
            reused = self._connection is not None
            try:
                answer = self._exchange(method, target, payload, headers, timeout)
                break
            except _STALE_CONNECTION as error:
                # The server may close a kept-alive connection between two requests: the
                # request is sent once more, on a new connection.
                self.close()
                if not reused:
                    raise Unreachable(self.server, _reason(error)) from error
        if not 200 <= answer.status <= 299:
            raise ApiError(answer.status, answer.reason, answer.text)
        return answer

    def _exchange(
        self,
        method: str,
        target: str,
        payload: bytes | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Answer:
        if self._connection is None:
            self._connection = self._open(timeout)
        connection = self._connection
        if connection.sock is not None:
            connection.sock.settimeout(timeout[1])
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except _STALE_CONNECTION:
            raise
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise Unreachable(self.server, _reason(error)) from error
        if response.will_close:
            self.close()
        return Answer(
            status=response.status,
            reason=response.reason,
            content_type=response.getheader("Content-Type", ""),
            body=data,
        )

    def stream(
        self,
        path: str,
        params: Mapping[str, str | int | bool],
        *,
        timeout: tuple[float, float],
    ) -> Iterator[dict[str, Any]]:
        """The JSON documents a streaming GET sends, one a line, until the server ends it."""
        connection = self._open(timeout)
        try:
            try:
                connection.request("GET", self._target(path, params), headers=self._headers(None))
                response = connection.getresponse()
                if not 200 <= response.status <= 299:
                    raise ApiError(
                        response.status,
                        response.reason,
                        response.read().decode("utf-8", errors="replace"),
                    )
                for line in response:
                    if line.strip():
                        yield json.loads(line)
            except (OSError, http.client.HTTPException) as error:
                raise Unreachable(self.server, _reason(error)) from error
        finally:
            connection.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "timed out"
    return str(error) or type(error).__name__

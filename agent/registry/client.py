"""HTTP to one repository of a registry: scheme choice, auth challenges, redirects, errors.

Each thread gets its own keep-alive connection (layers download in parallel). A 401 is
answered once per request: the challenge says how (a bearer token from the realm, scoped to
this repository, or basic credentials); the token is kept for later requests.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO

from agent.errors import AgentError
from agent.registry import auth
from agent.registry.endpoint import Endpoint, certs_dirs, resolve, ssl_context
from agent.registry.options import RegistryOptions

log = logging.getLogger(__name__)

TIMEOUT = 60.0
BLOCK = 1 << 20  # socket reads and uploads move a MiB at a time
MAX_ERROR_BODY = 1 << 16
MAX_REDIRECTS = 5

Body = bytes | Callable[[], Any] | None  # a callable opens a fresh file-like body


class RegistryError(AgentError):
    """A registry refused or failed a request; the status is what the Engine API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)


class Unauthorized(RegistryError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message)


class _Connection(http.client.HTTPConnection):
    """Plain HTTP, dialling ``connect_host`` while the Host header names the registry."""

    def __init__(self, host: str, port: int, connect_host: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, blocksize=BLOCK)
        self.connect_host = connect_host

    def connect(self) -> None:
        self.sock = socket.create_connection((self.connect_host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS, dialling ``connect_host``; the certificate must match the registry's name."""

    def __init__(
        self, host: str, port: int, connect_host: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context, blocksize=BLOCK)
        self.connect_host = connect_host
        self.tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.connect_host, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def connect(
    endpoint: Endpoint, scheme: str, options: RegistryOptions
) -> http.client.HTTPConnection:
    port = endpoint.default_port(scheme)
    if scheme == "http":
        return _Connection(endpoint.host, port, endpoint.connect_host, TIMEOUT)
    # an insecure registry is trusted as it is, unless certs.d says whom to trust
    verify = not endpoint.insecure or bool(certs_dirs(endpoint, options))
    context = ssl_context(endpoint, options, verify=verify)
    return _TLSConnection(endpoint.host, port, endpoint.connect_host, context, TIMEOUT)


def error_text(response: http.client.HTTPResponse, body: bytes) -> str:
    """The registry's own words: ``manifest unknown: manifest unknown``, or the status."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    parts = []
    if isinstance(data, dict):
        for error in data.get("errors") or []:
            if isinstance(error, dict):
                code = str(error.get("code") or "").lower().replace("_", " ")
                message = str(error.get("message") or "")
                parts.append(f"{code}: {message}" if code and message else code or message)
        for key in ("details", "detail", "message", "error"):
            if not parts and isinstance(data.get(key), str):
                parts.append(data[key])
    return "; ".join(p for p in parts if p) or f"{response.status} {response.reason}"


class _Unreachable(Exception):
    """The TLS handshake failed where plain HTTP may still work."""


class RepositoryClient:
    """Requests to ``/v2/<repository>/…`` of one registry, with ``actions`` ("pull", "push")."""

    def __init__(
        self,
        endpoint: Endpoint,
        repository: str,
        credentials: auth.Credentials,
        actions: str,
        options: RegistryOptions,
    ) -> None:
        self.endpoint = endpoint
        self.repository = repository
        self.credentials = credentials
        self.actions = actions
        self.options = options
        self.extra_scopes: list[str] = []
        self._scheme = ""
        self._authorization = ""
        self._bearer: dict[str, str] = {}  # the bearer challenge answered, to widen scopes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    @property
    def base_url(self) -> str:
        return f"{self._scheme or 'https'}://{self.endpoint.name}"

    # --- connections ------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.endpoint, self._scheme or "https", self.options)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def _choose_scheme(self) -> None:
        """Try HTTPS, and plain HTTP only where that is allowed."""
        if self._scheme:
            return
        failure: Exception | None = None
        for scheme in self.endpoint.schemes:
            self._scheme = scheme
            try:
                response = self._send("GET", "/v2/", {}, None)
                response.read()
                return
            except ssl.SSLError as exc:
                failure = exc
                self._drop_connection()
            except OSError as exc:
                failure = exc
                self._drop_connection()
                if not isinstance(exc, ConnectionRefusedError | ssl.SSLError):
                    break
        self._scheme = ""
        raise RegistryError(
            502, f"cannot reach registry {self.endpoint.name} ({self.base_url}/v2/): {failure}"
        )

    def _send(
        self, method: str, target: str, headers: dict[str, str], body: BinaryIO | bytes | None
    ) -> http.client.HTTPResponse:
        """One request on this thread's connection, reconnecting once if it went stale."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection()
                if attempt == 2 or (body is not None and not isinstance(body, bytes)):
                    raise
        raise AssertionError("unreachable")

    # --- requests ---------------------------------------------------------------------

    def path(self, suffix: str) -> str:
        return f"/v2/{self.repository}/{suffix}"

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
        expect: tuple[int, ...] = (200,),
        follow: bool = True,
    ) -> http.client.HTTPResponse:
        """Send, authenticating on a 401 and following redirects; a status outside
        ``expect`` raises RegistryError (the body read for its message)."""
        self._choose_scheme()
        answered = False
        redirects = 0
        while True:
            sent = dict(headers or {})
            if self._authorization:
                sent["Authorization"] = self._authorization
            payload = body() if callable(body) else body
            try:
                if target.startswith(("http://", "https://")):
                    response = self._send_absolute(method, target, sent, payload)
                else:
                    response = self._send(method, target, sent, payload)
            except OSError as exc:
                self._drop_connection()
                raise RegistryError(
                    502, f"{method} {self._url(target)}: {exc.strerror or exc}"
                ) from None
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()
            if response.status == 401 and not answered:
                header = response.getheader("WWW-Authenticate", "")
                response.read()
                self.authenticate(header)
                answered = True
                continue
            if (
                follow
                and response.status in (301, 302, 303, 307, 308)
                and method in ("GET", "HEAD")
            ):
                location = response.getheader("Location", "")
                response.read()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise RegistryError(502, f"{method} {self._url(target)}: too many redirects")
                target = urllib.parse.urljoin(self._url(target), location)
                continue
            if response.status in expect:
                return response
            text = error_text(response, response.read(MAX_ERROR_BODY))
            self._close_if_unread(response)
            if response.status == 401:
                if answered and self.credentials.username:
                    text = (
                        f"unauthorized: the registry refused the credentials of "
                        f"{self.credentials.username!r} ({text})"
                    )
                raise Unauthorized(text)
            raise RegistryError(response.status, text)

    def _close_if_unread(self, response: http.client.HTTPResponse) -> None:
        if not response.isclosed():
            self._drop_connection()

    def _url(self, target: str) -> str:
        return target if target.startswith(("http://", "https://")) else self.base_url + target

    def _send_absolute(
        self, method: str, url: str, headers: dict[str, str], body: BinaryIO | bytes | None
    ) -> http.client.HTTPResponse:
        """A URL elsewhere (a blob redirected to storage, an upload location)."""
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.netloc == self.endpoint.name and parts.scheme == self._scheme:
            return self._send(method, target or "/", headers, body)
        headers = {k: v for k, v in headers.items() if k != "Authorization"}
        response, _ = open_url(method, url, headers, body, self.options)
        return response

    # --- authentication ---------------------------------------------------------------

    def scopes(self) -> list[str]:
        own = [f"repository:{self.repository}:{self.actions}"] if self.repository else []
        return own + self.extra_scopes

    def authenticate(self, header: str) -> None:
        challenge = auth.pick(auth.parse_challenges(header))
        creds = self.credentials
        if challenge is None:
            raise Unauthorized(f"{self.endpoint.name} asks for credentials it does not name")
        if challenge.scheme == "basic":
            if not creds.username:
                raise Unauthorized("no basic auth credentials")
            if self._authorization == creds.basic():
                raise Unauthorized("unauthorized: incorrect username or password")
            self._authorization = creds.basic()
            return
        if creds.registry_token:
            self._authorization = f"Bearer {creds.registry_token}"
            return
        token = fetch_token(challenge.params, creds, self.scopes(), self.options)
        self._bearer = challenge.params
        self._authorization = f"Bearer {token}"

    def add_scope(self, scope: str) -> None:
        """Ask for more access (pull from another repository, to mount a blob from it).

        With bearer tokens that means a new token now; a token server that refuses the
        wider scope leaves the current one in place (the mount then just does not happen).
        """
        with self._lock:
            if scope in self.extra_scopes:
                return
            self.extra_scopes.append(scope)
            params = self._bearer
        if params and not self.credentials.registry_token:
            try:
                token = fetch_token(params, self.credentials, self.scopes(), self.options)
            except RegistryError as exc:
                log.info("no token for %s: %s", scope, exc)
                return
            self._authorization = f"Bearer {token}"


def open_url(
    method: str,
    url: str,
    headers: dict[str, str],
    body: BinaryIO | bytes | None,
    options: RegistryOptions,
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """A one-off request to an absolute URL (token realms, blob storage redirects)."""
    parts = urllib.parse.urlsplit(url)
    endpoint = resolve(parts.netloc, options)
    if parts.scheme == "http" and not endpoint.insecure:
        raise RegistryError(502, f"refusing plain HTTP to {parts.netloc}: it is not insecure")
    conn = connect(endpoint, parts.scheme, options)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        conn.request(method, target, body=body, headers={"Connection": "close", **headers})
        response = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise RegistryError(502, f"{method} {url}: {exc}") from None
    return response, conn


def fetch_token(
    params: dict[str, str], creds: auth.Credentials, scopes: list[str], options: RegistryOptions
) -> str:
    """A bearer token from the challenge's realm for ``scopes``."""
    realm = params.get("realm", "")
    if not realm.startswith(("http://", "https://")):
        raise Unauthorized(f"the registry's token realm {realm!r} is not a URL")
    query: list[tuple[str, str]] = []
    if params.get("service"):
        query.append(("service", params["service"]))
    query += [("scope", s) for s in scopes]
    headers: dict[str, str] = {}
    if creds.identity_token:
        form = urllib.parse.urlencode(
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", "vmctl"),
                ("service", params.get("service", "")),
                ("scope", " ".join(scopes)),
            ]
        ).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        response, conn = open_url("POST", realm, headers, form, options)
    else:
        if creds.username:
            headers["Authorization"] = creds.basic()
        separator = "&" if "?" in realm else "?"
        url = realm + separator + urllib.parse.urlencode(query)
        response, conn = open_url("GET", url, headers, None, options)
    try:
        body = response.read(MAX_ERROR_BODY)
    finally:
        conn.close()
    if response.status in (401, 403):
        detail = error_text(response, body)
        if not creds.anonymous:
            raise Unauthorized(f"unauthorized: {detail.removeprefix('unauthorized: ')}")
        raise Unauthorized(detail)
    if response.status != 200:
        raise RegistryError(502, f"token request to {realm} failed: {error_text(response, body)}")
    try:
        data = json.loads(body)
        token = data.get("token") or data.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise RegistryError(502, f"the token server {realm} answered without a token")
    return token

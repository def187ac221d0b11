"""Parsing of HTTP/1.1 requests: the head, the query string and the body framing."""

from __future__ import annotations

import io

from agent.api.buffered_socket import BufferedSocket, LineTooLong
from agent.api.limits import Limits
from agent.api.versions import API_VERSION, compare_versions
from agent.errors import AgentError, BadRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from _typeshed import WriteableBuffer

# Checked with plain string methods: no regular expressions (importing re and compiling
# them is a noticeable part of the agent's start-up in the VM under tcg).
# RFC 9110's tchar: what methods and header field names are made of
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_DIGITS = frozenset("0123456789")
_HEX_BYTES = frozenset(b"0123456789ABCDEFabcdef")
_FALSE_WORDS = frozenset(("", "0", "no", "false", "none"))


class ProtocolError(AgentError):
    """The request cannot be parsed; after the error response the connection is closed."""


class Headers:
    """Request header fields: order kept, names looked up case-insensitively."""

    __slots__ = ("_fields", "_index")

    def __init__(self) -> None:
        self._fields: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        self._fields.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str = "") -> str:
        """The first value of a field (as Go's Header.Get), or ``default``."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def tokens(self, name: str) -> set[str]:
        """Lower-cased comma-separated tokens of every value of a field (Connection, Upgrade)."""
        return {
            token.strip().lower()
            for value in self._index.get(name.lower(), ())
            for token in value.split(",")
            if token.strip()
        }

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)


def unquote(text: str, plus_is_space: bool = False) -> str:
    """Percent-decode URL text (decoded as UTF-8); invalid escapes are left as they are."""
    if plus_is_space:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    first, *rest = text.encode("utf-8").split(b"%")
    raw = bytearray(first)
    for piece in rest:  # each follows a "%": an escape if it starts with two hex digits
        if _HEX_BYTES.issuperset(piece[:2]) and len(piece) >= 2:
            raw.append(int(piece[:2], 16))
            raw += piece[2:]
        else:
            raw += b"%" + piece
    return raw.decode("utf-8", "replace")


def _is_token(text: str) -> bool:
    return bool(text) and _TOKEN_CHARS.issuperset(text)


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """``a=1&b=x&b=y`` -> {"a": ["1"], "b": ["x", "y"]}; keys without ``=`` get ""."""
    query: dict[str, list[str]] = {}
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        query.setdefault(unquote(key, True), []).append(unquote(value, True))
    return query


class RequestBody(io.RawIOBase):
    """The request body as a readable stream, de-framed (Content-Length or chunked).

    Handlers that take tar archives (build, load, import, archive upload) read this stream
    piecewise; JSON handlers use ``Request.read_body`` / ``Request.json`` instead.
    """

    def __init__(
        self,
        conn: BufferedSocket,
        length: int | None,
        chunked: bool,
        limits: Limits,
    ) -> None:
        super().__init__()
        self._conn = conn
        self._chunked = chunked
        self.limits = limits
        # bytes left in the body (Content-Length) or in the current chunk (chunked)
        self._left = 0 if chunked else (length or 0)
        self._done = not chunked and not length
        self._before_first_read: Callable[[], None] | None = None
        self.length = None if chunked else (length or 0)

    @property
    def exhausted(self) -> bool:
        """Every byte of the body has been consumed (so the connection can be reused)."""
        return self._done

    def call_before_first_read(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, just before the first read (to answer ``Expect: 100-continue``)."""
        self._before_first_read = hook

    @property
    def started(self) -> bool:
        """Reading has begun, or there is nothing to read."""
        return self._before_first_read is None or self._done

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._done or not len(view):
            return 0
        if self._before_first_read is not None:
            hook, self._before_first_read = self._before_first_read, None
            hook()
        if self._left == 0 and not self._next_chunk():
            return 0
        data = self._conn.read_some(min(len(view), self._left))
        if not data:
            raise EOFError("client closed the connection in the middle of the request body")
        view[: len(data)] = data
        self._left -= len(data)
        if self._left == 0:
            if self._chunked:
                self._expect_chunk_end()
            else:
                self._done = True
        return len(data)

    def _read_chunk_line(self) -> bytes:
        try:
            line = self._conn.read_line(self.limits.max_chunk_line)
        except LineTooLong:
            raise ProtocolError(400, "malformed chunked encoding: line too long") from None
        if line is None:
            raise EOFError("client closed the connection in the middle of the request body")
        return line

    def _next_chunk(self) -> bool:
        """Read a chunk-size line; False (and the trailers consumed) at the last chunk."""
        size_text = self._read_chunk_line().split(b";", 1)[0].strip(b" \t")
        if not 1 <= len(size_text) <= 16 or not _HEX_BYTES.issuperset(size_text):
            raise ProtocolError(400, "malformed chunked encoding: bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            while self._read_chunk_line():  # trailer fields are ignored
                pass
            self._done = True
            return False
        self._left = size
        return True

    def _expect_chunk_end(self) -> None:
        if self._read_chunk_line():
            raise ProtocolError(400, "malformed chunked encoding: missing CRLF after chunk")

    def read_all(self, limit: int) -> bytes:
        """The whole (rest of the) body; 413 if it is longer than ``limit`` bytes."""
        if self.length is not None and self.length > limit:
            raise ProtocolError(413, f"request body too large (limit {limit} bytes)")
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = self.read(65536)
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > limit:
                raise ProtocolError(413, f"request body too large (limit {limit} bytes)")
            parts.append(chunk)

    def drain(self, limit: int) -> bool:
        """Discard what is left of the body, up to ``limit`` bytes; True if it all went."""
        if self._done:
            return True
        if self.length is not None and self.length > limit:
            return False
        discarded = 0
        while discarded <= limit:
            chunk = self.read(65536)
            if not chunk:
                return True
            discarded += len(chunk)
        return False


class Request:
    """One parsed request; handlers get it with the route's path parameters filled in."""

    __slots__ = (
        "method",
        "target",
        "path",
        "raw_query",
        "http_version",
        "headers",
        "body",
        "keep_alive",
        "expect_continue",
        "params",
        "api_version",
        "_query",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        raw_query: str,
        http_version: tuple[int, int],
        headers: Headers,
        body: RequestBody,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path  # percent-decoded, including any /vX.Y prefix
        self.raw_query = raw_query
        self.http_version = http_version
        self.headers = headers
        self.body = body
        self.keep_alive = False
        self.expect_continue = False
        self.params: dict[str, str] = {}
        # the version from the /vX.Y prefix; unversioned paths mean the current version
        self.api_version = API_VERSION
        self._query: dict[str, list[str]] | None = None

    # -- query string ---------------------------------------------------------------------

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_query(self.raw_query)
        return self._query

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """Every value of a repeated query parameter (``names=a&names=b``)."""
        return list(self.query.get(name, ()))

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter the way dockerd reads them: "", 0, no, false, none = no."""
        if name not in self.query:
            return default
        return self.arg(name).strip().lower() not in _FALSE_WORDS

    def int_arg(self, name: str, default: int = 0) -> int:
        text = self.arg(name).strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise BadRequest(f"invalid value for {name}: {text!r} is not an integer") from None

    # -- headers and version --------------------------------------------------------------

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def wants_upgrade(self) -> bool:
        """The client asked for a raw stream (``Connection: Upgrade``, ``Upgrade: tcp``)."""
        return "upgrade" in self.headers.tokens("connection") and bool(
            self.headers.tokens("upgrade")
        )

    def version_at_least(self, version: str) -> bool:
        """Whether the client speaks at least this API version (for version-dependent output)."""
        return compare_versions(self.api_version, version) >= 0

    # -- body -----------------------------------------------------------------------------

    @property
    def has_body(self) -> bool:
        return self.body.length != 0

    def read_body(self, limit: int | None = None) -> bytes:
        """The whole body in memory; 413 beyond ``limit`` (default: ``Limits.max_body``)."""
        return self.body.read_all(self.body.limits.max_body if limit is None else limit)

    def json(self, default: object = None) -> Any:
        """The body parsed as JSON; ``default`` for an empty body; 400 if it is not JSON."""
        data = self.read_body()
        if not data.strip():
            return default
        import json

        try:
            return json.loads(data)
        except ValueError as exc:
            raise BadRequest(f"invalid JSON in request body: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (``{}`` when empty); 400 for any other JSON value."""
        value = self.json(default={})
        if not isinstance(value, dict):
            raise BadRequest("request body must be a JSON object")
        return value


def read_request(conn: BufferedSocket, limits: Limits) -> Request | None:
    """Read one request head from the connection; None if the client closed it cleanly.

    Raises ProtocolError (400, 431, 501, 505) for requests we refuse to parse, and EOFError
    when the client goes away half-way through a head.
    """
    budget = limits.max_head
    line: bytes | None = b""
    for _ in range(3):  # RFC 9112: ignore empty lines before the request line
        line = _read_head_line(conn, budget)
        if line is None:
            return None
        if line:
            break
    if not line:
        raise ProtocolError(400, "malformed request line")
    method, target, http_version = _parse_request_line(line.decode("latin-1"))
    headers = Headers()
    _read_headers(conn, headers, budget - len(line), limits.max_headers)
    body = _request_body(conn, headers, http_version, limits)
    path_part, _, query_part = target.partition("?")
    request = Request(
        method,
        target,
        unquote(path_part),
        query_part.partition("#")[0],
        http_version,
        headers,
        body,
    )
    connection = headers.tokens("connection")
    if http_version >= (1, 1):
        request.keep_alive = "close" not in connection
        request.expect_continue = headers.get("expect").lower() == "100-continue"
    else:
        request.keep_alive = "keep-alive" in connection
    return request


def _read_head_line(conn: BufferedSocket, budget: int) -> bytes | None:
    try:
        return conn.read_line(max(budget, 0))
    except LineTooLong:
        raise ProtocolError(431, "request header fields too large") from None


def _parse_request_line(line: str) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(" ")
    if len(parts) != 3 or not _is_token(parts[0]):
        raise ProtocolError(400, "malformed request line")
    method, target, version_text = parts
    # HTTP/<digit>.<digit>
    if not (
        len(version_text) == 8
        and version_text.startswith("HTTP/")
        and version_text[6] == "."
        and _DIGITS.issuperset(version_text[5] + version_text[7])
    ):
        raise ProtocolError(400, "malformed HTTP version in request line")
    major, minor = version_text[5], version_text[7]
    if major != "1":
        raise ProtocolError(505, f"HTTP version {version_text[5:]} not supported")
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end <= 0 and target != "*":
            raise ProtocolError(400, "malformed request target")
        if scheme_end > 0:  # absolute-form: keep only the path and query
            slash = target.find("/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else "/"
    return method, target, (1, int(minor))


def _read_headers(conn: BufferedSocket, headers: Headers, budget: int, max_fields: int) -> None:
    count = 0
    while True:
        line = _read_head_line(conn, budget)
        if line is None:
            raise EOFError("client closed the connection in the middle of the request head")
        if not line:
            return
        budget -= len(line) + 2
        count += 1
        if count > max_fields:
            raise ProtocolError(431, "too many request header fields")
        if line[:1] in (b" ", b"\t"):
            raise ProtocolError(400, "obsolete header line folding is not accepted")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not _is_token(name):
            raise ProtocolError(400, "malformed header field")
        headers.add(name, value.strip(" \t"))


def _request_body(
    conn: BufferedSocket, headers: Headers, http_version: tuple[int, int], limits: Limits
) -> RequestBody:
    """The body framing from Transfer-Encoding / Content-Length, refusing ambiguous ones."""
    transfer_encoding = headers.get_all("transfer-encoding")
    lengths = headers.get_all("content-length")
    if transfer_encoding:
        # both at once is how requests get smuggled past proxies: refuse, as Go does
        if lengths or http_version < (1, 1):
            raise ProtocolError(400, "conflicting Transfer-Encoding and Content-Length")
        if ",".join(transfer_encoding).strip().lower() != "chunked":
            raise ProtocolError(501, "unsupported Transfer-Encoding (only chunked is)")
        return RequestBody(conn, None, True, limits)
    if lengths:
        values = {value.strip() for value in lengths}
        text = values.pop()
        if values or not text.isdigit() or not text.isascii():
            raise ProtocolError(400, "invalid Content-Length")
        return RequestBody(conn, int(text), False, limits)
    return RequestBody(conn, 0, False, limits)

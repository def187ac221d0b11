"""The agent's HTTP layer, served in-process on a temporary unix socket and spoken to raw."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from agent import __version__
from agent.api.limits import Limits
from agent.api.request import Request
from agent.api.response import ResponseWriter
from agent.api.router import Router
from agent.api.routes import build_router
from agent.api.server import Server
from agent.api.unix_listener import open_unix_listener
from agent.errors import Conflict

TIMEOUT = 10.0


# -- a minimal raw HTTP client -----------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, chunks: list[int]):
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body
        self.chunks = chunks  # sizes of the chunks of a chunked body

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(stream: BinaryIO, method: str = "GET") -> RawResponse:
    """Read one response from a buffered socket file; 1xx interim responses are skipped."""
    while True:
        status_line = stream.readline().decode("latin-1")
        assert status_line.startswith("HTTP/1.1 "), status_line
        status = int(status_line.split(" ")[1])
        headers: dict[str, str] = {}
        while True:
            line = stream.readline().decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200 or status == 101:
            break
    chunks: list[int] = []
    if method == "HEAD" or status in (101, 204, 304):
        body = b""
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int(stream.readline().strip(), 16)
            if size == 0:
                assert stream.readline() == b"\r\n"
                break
            parts.append(stream.read(size))
            chunks.append(size)
            assert stream.read(2) == b"\r\n"
        body = b"".join(parts)
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    else:
        body = stream.read()
    return RawResponse(status, headers, body, chunks)


class Client:
    """One connection to the server; send raw bytes, read parsed responses."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rb")

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def request(
        self, method: str, target: str, headers: str = "", body: bytes = b""
    ) -> RawResponse:
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        head = f"{method} {target} HTTP/1.1\r\nHost: test\r\n{headers}{length}\r\n"
        self.send(head.encode() + body)
        return read_response(self.stream, method)

    def read(self, method: str = "GET") -> RawResponse:
        return read_response(self.stream, method)

    def at_eof(self) -> bool:
        return self.stream.read(1) == b""

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


# -- test-only routes --------------------------------------------------------------------

gone_event = threading.Event()


def echo(request: Request, response: ResponseWriter) -> None:
    body = request.read_body()
    response.send_json(
        {
            "length": len(body),
            "text": body.decode("latin-1"),
            "chunked": request.body.length is None,
        }
    )


def echo_json(request: Request, response: ResponseWriter) -> None:
    response.send_json({"got": request.json(default={})})


def ignore_body(request: Request, response: ResponseWriter) -> None:
    response.send(204)


def stream_three(request: Request, response: ResponseWriter) -> None:
    with response.start_stream(content_type="application/json") as stream:
        for n in range(3):
            stream.write_json({"n": n})  # each message is flushed: one chunk each
        stream.write(b"tail-")
        stream.write(b"together")
        stream.flush()


def hijack_upper(request: Request, response: ResponseWriter) -> None:
    with response.hijack() as raw:
        while True:
            data = raw.recv(4096)
            if not data:
                break
            raw.sendall(data.upper())
        raw.close_write()


def boom(request: Request, response: ResponseWriter) -> None:
    raise RuntimeError("exploded while holding secret-state")


def conflict(request: Request, response: ResponseWriter) -> None:
    raise Conflict("the name web is already in use")


def inspect_params(request: Request, response: ResponseWriter) -> None:
    response.send_json(
        {
            "params": request.params,
            "all": request.flag("all"),
            "size": request.flag("size"),
            "names": request.args("names"),
            "filters": request.arg("filters"),
            "version": request.api_version,
        }
    )


def fail_mid_stream(request: Request, response: ResponseWriter) -> None:
    stream = response.start_stream()
    stream.write_json({"status": "Pulling"})
    raise Conflict("too late for a status code")


def say_nothing(request: Request, response: ResponseWriter) -> None:
    pass


def object_body(request: Request, response: ResponseWriter) -> None:
    response.send_json(request.json_object(), status=201)


def wait_until_gone(request: Request, response: ResponseWriter) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if response.peer_closed():
            gone_event.set()
            return
        time.sleep(0.02)


def make_router() -> Router:
    router = build_router()
    router.add("POST", "/test/echo", echo)
    router.add("POST", "/test/json", echo_json)
    router.add("POST", "/test/ignore", ignore_body)
    router.add("POST", "/test/hijack", hijack_upper)
    router.add("GET", "/test/boom", boom)
    router.add("GET", "/test/conflict", conflict)
    router.add("GET", "/test/things/{id}/json", inspect_params)
    router.add("GET", "/test/images/{name:.+}/json", inspect_params)  # /images/… is real
    router.add("POST", "/test/wait-gone", wait_until_gone)
    router.add("GET", "/test/fail-mid-stream", fail_mid_stream)
    router.add("GET", "/test/nothing", say_nothing)
    router.add(("GET", "HEAD"), "/test/stream", stream_three)
    router.add("POST", "/test/object", object_body)
    return router


@pytest.fixture
def server_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="agt-")
    path = os.path.join(directory, "engine.sock")
    listener, _identity = open_unix_listener(path)
    server = Server(listener, make_router(), Limits(max_head=8192, max_body=4096))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.close()
        os.unlink(path)
        os.rmdir(directory)


@pytest.fixture
def client(server_path: str) -> Iterator[Client]:
    c = Client(server_path)
    try:
        yield c
    finally:
        c.close()


def assert_common_headers(response: RawResponse) -> None:
    assert response.headers["api-version"] == "1.50"
    assert response.headers["docker-experimental"] == "false"
    assert response.headers["ostype"] == "linux"
    assert response.headers["server"] == f"vmctl-agent/{__version__} (linux)"


# -- /_ping and /version -----------------------------------------------------------------


def test_ping_get(client: Client) -> None:
    response = client.request("GET", "/_ping")
    assert response.status == 200
    assert response.body == b"OK"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["builder-version"] == "1"
    assert response.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert response.headers["pragma"] == "no-cache"
    assert_common_headers(response)


def test_ping_head_has_headers_and_no_body(client: Client) -> None:
    response = client.request("HEAD", "/_ping")
    assert response.status == 200
    assert response.headers["content-length"] == "0"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert_common_headers(response)
    # nothing was sent after the head: the next response starts right away
    assert client.request("GET", "/_ping").body == b"OK"


def test_version_document(client: Client) -> None:
    response = client.request("GET", "/version")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert_common_headers(response)
    doc = response.json()
    assert isinstance(doc, dict)
    assert doc["Version"] == __version__
    assert doc["ApiVersion"] == "1.50"
    assert doc["MinAPIVersion"] == "1.24"
    assert doc["Os"] == "linux"
    assert doc["Arch"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(
        os.uname().machine, os.uname().machine
    )
    assert doc["KernelVersion"] == os.uname().release
    assert doc["GoVersion"].startswith("python3.")
    assert doc["Platform"] == {"Name": "vmctl agent"}
    assert doc["Experimental"] is False
    (engine,) = doc["Components"]
    assert engine["Name"] == "Engine"
    assert engine["Version"] == __version__
    details = engine["Details"]
    assert details["ApiVersion"] == "1.50"
    assert details["MinAPIVersion"] == "1.24"
    assert details["Experimental"] == "false"
    assert details["KernelVersion"] == os.uname().release
    for key in ("Arch", "Os", "BuildTime", "GitCommit", "GoVersion", "OperatingSystem"):
        assert details[key], key


def test_versioned_paths(client: Client) -> None:
    assert client.request("GET", "/v1.50/version").json()["ApiVersion"] == "1.50"
    assert client.request("GET", "/v1.24/_ping").body == b"OK"
    assert client.request("HEAD", "/v1.41/_ping").status == 200


def test_too_new_version(client: Client) -> None:
    response = client.request("GET", "/v1.99/version")
    assert response.status == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "message": "client version 1.99 is too new. Maximum supported API version is 1.50"
    }


def test_too_old_version(client: Client) -> None:
    response = client.request("GET", "/v1.10/_ping")
    assert response.status == 400
    assert response.json() == {
        "message": "client version 1.10 is too old. Minimum supported API version is 1.24, "
        "please upgrade your client to a newer version"
    }


# -- routing and errors ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/nope", "/v1.50/nope", "/vabc/_ping", "/_ping/extra"])
def test_unknown_path_is_404(client: Client, target: str) -> None:
    response = client.request("GET", target)
    assert response.status == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": "page not found"}
    assert_common_headers(response)


def test_wrong_method_is_405(client: Client) -> None:
    response = client.request("POST", "/_ping")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert "POST" in response.json()["message"]


def test_path_params_and_query(client: Client) -> None:
    response = client.request(
        "GET",
        "/v1.44/test/things/abc123/json?all=1&size=false&names=a&names=b%20c"
        "&filters=%7B%22label%22%3A%5B%22x%3Dy%22%5D%7D",
    )
    assert response.json() == {
        "params": {"id": "abc123"},
        "all": True,
        "size": False,
        "names": ["a", "b c"],
        "filters": '{"label":["x=y"]}',
        "version": "1.44",
    }
    image = client.request("GET", "/test/images/docker.io/library/busybox:latest/json").json()
    assert image["params"] == {"name": "docker.io/library/busybox:latest"}


def test_agent_error_status(client: Client) -> None:
    response = client.request("GET", "/test/conflict")
    assert response.status == 409
    assert response.json() == {"message": "the name web is already in use"}


def test_handler_exception_is_500_without_traceback(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.request("GET", "/test/boom")
    assert response.status == 500
    message = response.json()["message"]
    assert message.startswith("internal server error: RuntimeError")
    assert "Traceback" not in response.body.decode()
    assert any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    # the connection is still usable
    assert client.request("GET", "/_ping").status == 200


def test_invalid_json_body_is_400(client: Client) -> None:
    response = client.request(
        "POST", "/test/json", "Content-Type: application/json\r\n", b"{not json"
    )
    assert response.status == 400
    assert "invalid JSON" in response.json()["message"]
    good = client.request("POST", "/test/json", body=b'{"Image": "busybox"}')
    assert good.json() == {"got": {"Image": "busybox"}}


# -- connection handling -----------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection(client: Client) -> None:
    first = client.request("GET", "/_ping")
    second = client.request("GET", "/version")
    assert first.status == second.status == 200
    assert "connection" not in first.headers


def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    client.send(
        b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert client.read().body == b"OK"
    assert client.read().status == 404
    assert client.read("HEAD").status == 200


def test_connection_close_is_honoured(client: Client) -> None:
    response = client.request("GET", "/_ping", "Connection: close\r\n")
    assert response.headers["connection"] == "close"
    assert client.at_eof()


def test_http_1_0_closes_unless_keep_alive(server_path: str) -> None:
    c = Client(server_path)
    c.send(b"GET /_ping HTTP/1.0\r\n\r\n")
    assert c.read().body == b"OK"
    assert c.at_eof()
    c.close()
    c = Client(server_path)
    c.send(b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.read().headers["connection"] == "keep-alive"
    c.send(b"GET /_ping HTTP/1.0\r\n\r\n")
    assert c.read().body == b"OK"
    c.close()


def test_content_length_body(client: Client) -> None:
    response = client.request("POST", "/test/echo", body=b"hello world")
    assert response.json() == {"length": 11, "text": "hello world", "chunked": False}


def test_chunked_request_body(client: Client) -> None:
    client.send(
        b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;ext=1\r\n \r\n"
        b"5\r\nworld\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    assert client.read().json() == {"length": 11, "text": "hello world", "chunked": True}
    assert client.request("GET", "/_ping").body == b"OK"  # framing stayed in sync


def test_malformed_chunk_size_is_400_and_closes(client: Client) -> None:
    client.send(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    response = client.read()
    assert response.status == 400
    assert "chunked" in response.json()["message"]
    assert client.at_eof()


def test_unread_body_is_skipped_for_the_next_request(client: Client) -> None:
    assert client.request("POST", "/test/ignore", body=b"x" * 3000).status == 204
    assert client.request("GET", "/_ping").body == b"OK"


def test_body_over_the_limit_is_413(client: Client) -> None:
    response = client.request("POST", "/test/echo", body=b"x" * 5000)
    assert response.status == 413
    assert "too large" in response.json()["message"]


def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    client.send(
        b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1000\r\n"
        + b"y" * 4096
        + b"\r\n"
        + b"10\r\n"
        + b"y" * 16
        + b"\r\n0\r\n\r\n"
    )
    assert client.read().status == 413


def test_expect_100_continue(client: Client) -> None:
    client.send(
        b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert client.stream.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert client.stream.readline() == b"\r\n"
    client.send(b"body")
    assert client.read().json()["text"] == "body"


def test_streamed_chunked_response(client: Client) -> None:
    response = client.request("GET", "/test/stream")
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"] == "application/json"
    assert_common_headers(response)
    lines = response.body.split(b"\n")
    assert [json.loads(line) for line in lines[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert lines[3] == b"tail-together"
    # every write_json was its own flush; the two writes went out together
    assert response.chunks == [len(b'{"n":0}\n')] * 3 + [len(b"tail-together")]
    assert client.request("GET", "/_ping").body == b"OK"


def test_streamed_response_to_http_1_0_is_delimited_by_close(server_path: str) -> None:
    c = Client(server_path)
    c.send(b"GET /test/stream HTTP/1.0\r\n\r\n")
    response = c.read()
    assert "transfer-encoding" not in response.headers
    assert response.body.endswith(b"tail-together")
    c.close()


def test_head_of_a_streamed_response_has_no_body(client: Client) -> None:
    response = client.request("HEAD", "/test/stream")
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert client.request("GET", "/_ping").body == b"OK"


def test_error_after_the_stream_started_cuts_the_body_short(client: Client) -> None:
    client.send(b"GET /test/fail-mid-stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.stream.readline() == b"HTTP/1.1 200 OK\r\n"
    rest = client.stream.read()  # until the server closes: no terminating chunk
    assert rest.endswith(b'{"status":"Pulling"}\n\r\n')
    assert not rest.endswith(b"0\r\n\r\n")


def test_handler_that_sends_nothing_gives_an_empty_200(client: Client) -> None:
    response = client.request("GET", "/test/nothing")
    assert (response.status, response.body, response.headers["content-length"]) == (200, b"", "0")


def test_json_object_body(client: Client) -> None:
    assert client.request("POST", "/test/object", body=b'{"a": [1]}').json() == {"a": [1]}
    assert client.request("POST", "/test/object").status == 201
    assert client.request("POST", "/test/object", body=b"[1, 2]").status == 400


def test_hijack_hands_over_the_raw_socket_with_buffered_bytes(server_path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(server_path)
    # the first stream bytes travel in the same packet as the request: the server has them
    # in its read buffer when the handler hijacks, and must pass them on
    sock.sendall(
        b"POST /v1.50/test/hijack HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: tcp\r\nContent-Type: text/plain\r\n\r\nearly-bytes|"
    )
    received = b""
    while b"EARLY-BYTES|" not in received:
        received += sock.recv(4096)
    sock.sendall(b"later-bytes")
    sock.shutdown(socket.SHUT_WR)  # the CLI half-closes after stdin EOF
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    head, _, raw = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 UPGRADED"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Content-Type"] == "application/vnd.docker.raw-stream"
    assert fields["Connection"] == "Upgrade"
    assert fields["Upgrade"] == "tcp"
    assert fields["Api-Version"] == "1.50"
    assert raw == b"EARLY-BYTES|LATER-BYTES"


def test_hijack_without_upgrade_answers_200(server_path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(server_path)
    sock.sendall(b"POST /test/hijack HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nabc")
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    head, _, raw = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/vnd.docker.raw-stream" in head
    assert raw == b"ABC"


def test_handler_sees_a_client_that_went_away(server_path: str) -> None:
    gone_event.clear()
    c = Client(server_path)
    c.send(b"POST /test/wait-gone HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    time.sleep(0.1)
    c.close()
    assert gone_event.wait(TIMEOUT)


# -- malformed requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /_ping\r\n\r\n",
        b"GET /_ping HTTP/1.1 extra\r\n\r\n",
        b"GET /_ping HTTX/1.1\r\n\r\n",
        b"G(T /_ping HTTP/1.1\r\n\r\n",
        b"GET _ping HTTP/1.1\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"POST /test/echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /test/echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /test/echo HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_malformed_request_is_400_and_closes(client: Client, raw: bytes) -> None:
    client.send(raw)
    response = client.read()
    assert response.status == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert "message" in response.json()
    assert client.at_eof()


def test_http_2_is_505(client: Client) -> None:
    client.send(b"GET /_ping HTTP/2.0\r\n\r\n")
    assert client.read().status == 505


@pytest.mark.parametrize(
    "version", [b"HTTP/1.x", b"HTTP/11", b"HTTP/1.10", b"http/1.1", b"HTTP/1.\xb2"]
)
def test_malformed_http_versions_are_400(client: Client, version: bytes) -> None:
    # (b"\xb2" is latin-1's superscript two: str.isdigit() says yes, HTTP says no)
    client.send(b"GET /_ping " + version + b"\r\n\r\n")
    assert client.read().status == 400


def test_http_1_0_is_served(client: Client) -> None:
    client.send(b"GET /_ping HTTP/1.0\r\n\r\n")
    assert client.read().status == 200


def test_unknown_transfer_encoding_is_501(client: Client) -> None:
    client.send(b"POST /test/echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert client.read().status == 501


def test_oversized_headers_are_431(client: Client) -> None:
    client.send(b"GET /_ping HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    response = client.read()
    assert response.status == 431
    assert response.json() == {"message": "request header fields too large"}
    assert client.at_eof()


def test_oversized_request_line_is_431(client: Client) -> None:
    client.send(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert client.read().status == 431


def test_many_small_headers_add_up_to_431(client: Client) -> None:
    client.send(b"GET /_ping HTTP/1.1\r\n" + b"X-Some-Header: value\r\n" * 500 + b"\r\n")
    assert client.read().status == 431


def test_absolute_form_target(client: Client) -> None:
    client.send(b"GET http://docker/v1.50/_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
    assert client.read().body == b"OK"

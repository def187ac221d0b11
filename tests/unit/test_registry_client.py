"""The registry client's pieces that need no root: challenges, credentials, endpoints,
platforms, and blob downloads (resume, verification) against an in-process HTTP server."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import AgentError, BadRequest, NotFound
from agent.images.reference import parse
from agent.registry import auth, manifest
from agent.registry.client import RegistryError, RepositoryClient, Unauthorized
from agent.registry.download import Downloads, fetch_blob
from agent.registry.endpoint import Endpoint, is_loopback, resolve, split_host_port
from agent.registry.manifest import Descriptor, Platform
from agent.registry.options import RegistryOptions
from agent.registry.progress import Progress
from vmctl.registry_cli import ProgressView, registry_auth

# --- Www-Authenticate ---------------------------------------------------------------------


def test_bearer_challenge_is_parsed() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    (challenge,) = auth.parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    }


def test_several_challenges_and_escapes() -> None:
    header = 'Basic realm="a \\"quoted\\" realm", Bearer realm="https://t/x",service=reg'
    challenges = auth.parse_challenges(header)
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params["realm"] == 'a "quoted" realm'
    assert challenges[1].params == {"realm": "https://t/x", "service": "reg"}
    picked = auth.pick(challenges)
    assert picked is not None and picked.scheme == "bearer"
    assert auth.pick(auth.parse_challenges("")) is None


def test_registry_auth_header() -> None:
    raw = json.dumps({"username": "u", "password": "p", "serveraddress": "x"}).encode()
    unpadded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    creds = auth.decode_header(unpadded)
    assert (creds.username, creds.password, creds.anonymous) == ("u", "p", False)
    assert creds.basic() == "Basic " + base64.b64encode(b"u:p").decode()
    assert auth.decode_header("e30=").anonymous  # {}, what the CLI sends when logged out
    assert auth.decode_header("").anonymous
    token = auth.decode_header(base64.urlsafe_b64encode(b'{"identitytoken":"t"}').decode())
    assert token.identity_token == "t" and not token.anonymous
    with pytest.raises(BadRequest):
        auth.decode_header("!!!not base64")
    with pytest.raises(BadRequest):
        auth.decode_header(base64.urlsafe_b64encode(b'{"username": 5}').decode())


# --- endpoints ------------------------------------------------------------------------------


def test_reference_to_endpoint() -> None:
    hub = resolve(parse("busybox").domain, RegistryOptions())
    assert (hub.name, hub.host, hub.port, hub.insecure) == (
        "registry-1.docker.io",
        "registry-1.docker.io",
        None,
        False,
    )
    assert hub.schemes == ("https",)
    local = resolve(parse("localhost:5000/x").domain, RegistryOptions())
    assert (local.name, local.connect_host, local.port, local.insecure) == (
        "localhost:5000",
        "localhost",
        5000,
        True,
    )
    assert local.schemes == ("https", "http")
    other = resolve("reg.example:8443", RegistryOptions())
    assert not other.insecure and other.default_port("https") == 8443
    listed = RegistryOptions(insecure_registries=("reg.example:8443", "plain.example"))
    assert resolve("reg.example:8443", listed).insecure
    assert resolve("plain.example", listed).insecure
    assert not resolve("reg.example:9000", listed).insecure


def test_host_loopback_mapping() -> None:
    vm = RegistryOptions(host_loopback="10.0.2.2")
    for name in ("localhost:5000", "127.0.0.1:5000", "127.1.2.3:5000", "[::1]:5000"):
        endpoint = resolve(name, vm)
        assert endpoint.connect_host == "10.0.2.2", name
        assert endpoint.name == name and endpoint.port == 5000
    assert resolve("reg.example:5000", vm).connect_host == "reg.example"
    assert resolve("localhost:5000", RegistryOptions()).connect_host == "localhost"
    assert split_host_port("[::1]:5000") == ("::1", 5000)
    assert split_host_port("example.com") == ("example.com", None)
    assert is_loopback("::1") and is_loopback("LOCALHOST") and not is_loopback("10.0.2.2")


# --- platforms --------------------------------------------------------------------------------


def _index(*platforms: dict[str, str]) -> dict[str, object]:
    return {
        "manifests": [
            {"digest": "sha256:" + f"{i:x}" * 64, "size": 10 + i, "platform": p}
            for i, p in enumerate(platforms, start=1)
        ]
    }


def test_platform_choice() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
    )
    assert manifest.choose(index, Platform("linux", "amd64")).size == 13
    assert manifest.choose(index, Platform("linux", "arm64")).size == 14
    assert manifest.choose(index, Platform("linux", "arm", "v7")).size == 12
    assert manifest.choose(index, Platform("linux", "arm", "v8")).size == 12  # v7 runs on v8
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        manifest.choose(index, Platform("linux", "s390x"))


def test_engine_platform_and_parsing() -> None:
    assert manifest.engine_platform("x86_64") == Platform("linux", "amd64")
    assert manifest.engine_platform("aarch64") == Platform("linux", "arm64", "v8")
    assert manifest.parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert manifest.parse_platform("linux/x86_64") == Platform("linux", "amd64")
    assert manifest.parse_platform("") is None
    with pytest.raises(BadRequest):
        manifest.parse_platform("linux//")


def test_manifest_kinds() -> None:
    assert manifest.kind({"manifests": []}, "") == manifest.OCI_INDEX
    assert manifest.kind({}, manifest.DOCKER_MANIFEST) == manifest.DOCKER_MANIFEST
    with pytest.raises(AgentError, match="schema 1"):
        manifest.kind({"schemaVersion": 1}, "application/json")
    layer = {"mediaType": "application/vnd.foreign", "digest": "sha256:" + "a" * 64, "size": 1}
    config = {"digest": "sha256:" + "b" * 64, "size": 2}
    with pytest.raises(AgentError, match="cannot be unpacked"):
        manifest.image_manifest({"config": config, "layers": [layer]})


# --- downloads against a tiny server -----------------------------------------------------------

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    ranges: list[str] = []
    body = BLOB

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = type(self).body
        wanted = self.headers.get("Range", "")
        type(self).ranges.append(wanted)
        if wanted:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"ranges": [], "body": BLOB})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _client(name: str) -> RepositoryClient:
    options = RegistryOptions(certs_dirs=())
    return RepositoryClient(resolve(name, options), "x", auth.Credentials(), "pull", options)


def test_download_resumes_with_a_range(server: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    name, handler = server
    blob = Descriptor("", BLOB_DIGEST, len(BLOB))
    partial = tmp_path / (BLOB_DIGEST.removeprefix("sha256:") + ".partial")
    partial.write_bytes(BLOB[:1000])
    client = _client(name)  # loopback: HTTPS is tried first, then plain HTTP
    path = fetch_blob(client, blob, tmp_path, Progress(None))
    client.close()
    assert path.read_bytes() == BLOB and not partial.exists()
    assert handler.ranges == ["bytes=1000-"]


def test_tampered_download_is_refused(server: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    name, handler = server
    handler.body = BLOB[:-1] + b"X"
    client = _client(name)
    with pytest.raises(RegistryError, match="verification failed"):
        fetch_blob(client, Descriptor("", BLOB_DIGEST, len(BLOB)), tmp_path, Progress(None))
    client.close()
    assert list(tmp_path.iterdir()) == []


BIG = BLOB * 4  # the download reads a MiB at a time: four of them, a pause after each
BIG_DIGEST = "sha256:" + hashlib.sha256(BIG).hexdigest()


class _SlowHandler(_Handler):
    """Sends the body in four parts, a pause between them."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        data = type(self).body
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        quarter = len(data) // 4
        for start in range(0, len(data), quarter):
            self.wfile.write(data[start : start + quarter])
            self.wfile.flush()
            time.sleep(0.15)


@pytest.fixture
def slow_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_SlowHandler,), {"ranges": [], "body": BIG})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _read_following(downloads: Downloads, blob: Descriptor) -> tuple[bytes, bool]:
    """The whole blob through :meth:`Downloads.open`; and whether data came before the
    download had ended."""
    following = downloads.open(blob)
    chunks, early = [], False
    try:
        while chunk := following.read(64 << 10):
            early = early or not following.done
            chunks.append(chunk)
    finally:
        following.close()
    return b"".join(chunks), early


def test_a_layer_is_read_while_it_arrives(
    slow_server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    name, _ = slow_server
    downloads = Downloads(_client(name), tmp_path, Progress(None))
    try:
        data, early = _read_following(downloads, Descriptor("", BIG_DIGEST, len(BIG)))
    finally:
        downloads.close()
    assert early  # read while downloading
    assert data == BIG  # and the end only after verifying
    assert (tmp_path / BIG_DIGEST.removeprefix("sha256:")).read_bytes() == BIG


def test_a_followed_layer_that_fails_verification_never_ends(
    slow_server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    name, handler = slow_server
    handler.body = BIG[:-1] + b"X"
    downloads = Downloads(_client(name), tmp_path, Progress(None))
    try:
        with pytest.raises(RegistryError, match="verification failed"):
            _read_following(downloads, Descriptor("", BIG_DIGEST, len(BIG)))
    finally:
        downloads.close()
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_layer_is_read_once_verified(
    server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    # The partial file's first bytes came from an earlier attempt: only the digest over
    # the whole file vouches for them, so nothing is read before it matched.
    name, handler = server
    partial = tmp_path / (BLOB_DIGEST.removeprefix("sha256:") + ".partial")
    partial.write_bytes(BLOB[:1000])
    downloads = Downloads(_client(name), tmp_path, Progress(None))
    try:
        data, early = _read_following(downloads, Descriptor("", BLOB_DIGEST, len(BLOB)))
    finally:
        downloads.close()
    assert data == BLOB and not early
    assert handler.ranges == ["bytes=1000-"]


def test_plain_http_only_for_insecure_registries(
    server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    port = int(server[0].split(":")[1])
    options = RegistryOptions(certs_dirs=())
    blob = Descriptor("", BLOB_DIGEST, len(BLOB))
    # a registry with a public name (dialled here at 127.0.0.1) that speaks plain HTTP
    secure = Endpoint(f"reg.test:{port}", "reg.test", port, "127.0.0.1", insecure=False)
    client = RepositoryClient(secure, "x", auth.Credentials(), "pull", options)
    with pytest.raises(RegistryError, match="cannot reach registry reg.test"):
        fetch_blob(client, blob, tmp_path, Progress(None))
    client.close()
    listed = Endpoint(f"reg.test:{port}", "reg.test", port, "127.0.0.1", insecure=True)
    client = RepositoryClient(listed, "x", auth.Credentials(), "pull", options)
    assert fetch_blob(client, blob, tmp_path, Progress(None)).read_bytes() == BLOB
    client.close()


# --- vmctl's side -------------------------------------------------------------------------------


def test_registry_auth_from_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    encoded = base64.b64encode(b"me:pw").decode()
    config.write_text(json.dumps({"auths": {"localhost:5000": {"auth": encoded}}}))
    header = registry_auth("localhost:5000", config)
    assert auth.decode_header(header).username == "me"
    assert auth.decode_header(header).password == "pw"
    assert registry_auth("other:1", config) == ""
    assert registry_auth("x", tmp_path / "missing.json") == ""


def test_progress_view_is_quiet_without_a_terminal(tmp_path: Path) -> None:
    out = (tmp_path / "out").open("w+")
    view = ProgressView(out, terminal=False)
    view.show({"status": "Pulling fs layer", "id": "abc", "progressDetail": {}})
    view.show({"status": "Downloading", "id": "abc", "progressDetail": {"current": 1, "total": 2}})
    view.show({"status": "Digest: sha256:00"})
    view.show({"status": "Status: Downloaded newer image for x:1"})
    out.seek(0)
    assert out.read() == "Digest: sha256:00\nStatus: Downloaded newer image for x:1\n"


# --- uploads --------------------------------------------------------------------------------


class _UploadHandler(http.server.BaseHTTPRequestHandler):
    """Enough of the blob upload API to see which requests a push makes."""

    requests: list[tuple[str, str, str, int]] = []
    received = bytearray()

    def _answer(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _note(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        entry = (self.command, self.path, self.headers.get("Content-Range", ""), length)
        type(self).requests.append(entry)
        return data

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, {})

    def do_POST(self) -> None:  # noqa: N802
        self._note()
        self._answer(202, {"Location": "/v2/x/blobs/uploads/u1?_state=s0"})

    def do_PATCH(self) -> None:  # noqa: N802
        type(self).received += self._note()
        self._answer(202, {"Location": f"/v2/x/blobs/uploads/u1?_state=s{len(self.received)}"})

    def do_PUT(self) -> None:  # noqa: N802
        type(self).received += self._note()
        digest = "sha256:" + hashlib.sha256(self.received).hexdigest()
        self._answer(201, {"Docker-Content-Digest": digest})

    def log_message(self, *args: object) -> None:
        pass


def test_big_blobs_upload_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.registry import push

    monkeypatch.setattr(push, "MONOLITHIC_MAX", 400_000)
    handler = type("Upload", (_UploadHandler,), {"requests": [], "received": bytearray()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        blob_file = tmp_path / "blob"
        blob_file.write_bytes(BLOB)
        client = _client(f"127.0.0.1:{httpd.server_address[1]}")
        blob = Descriptor("", BLOB_DIGEST, len(BLOB))
        progress = Progress(None)
        push.upload_blob(client, str(blob_file), blob, push._Report(progress, "x", len(BLOB)))
        client.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    methods = [(m, r, n) for m, _, r, n in handler.requests]
    assert methods == [
        ("POST", "", 0),
        ("PATCH", "0-399999", 400_000),
        ("PATCH", "400000-799999", 400_000),
        ("PUT", "", len(BLOB) - 800_000),
    ]
    assert bytes(handler.received) == BLOB
    put_path = handler.requests[-1][1]
    assert "_state=s800000" in put_path and f"digest={BLOB_DIGEST.replace(':', '%3A')}" in put_path


# --- the machine's insecure registries, carried to the guest -----------------------------------


def test_machine_insecure_registries_round_trip_and_seed(tmp_path: Path) -> None:
    from vmctl.cli import build_parser, config_from_args
    from vmctl.config import MachineConfig
    from vmctl.errors import VmctlError
    from vmctl.seed import seed_config_text

    args = build_parser().parse_args(
        ["machine", "create", "--no-mount", "--insecure-registry", "reg.lan:5000",
         "--insecure-registry", "[fd00::1]:80", "m1"]
    )  # fmt: skip
    config = config_from_args("m1", args)
    assert config.insecure_registries == ("reg.lan:5000", "[fd00::1]:80")
    again = MachineConfig.from_json(config.to_json())
    assert again == config
    seed = seed_config_text(config)
    assert "VMCTL_INSECURE_REGISTRIES='reg.lan:5000 [fd00::1]:80'\n" in seed
    assert "VMCTL_HOST_HOME=" in seed
    # the guest's agent reads the seed itself (values may span lines: the shares)
    from agent.__main__ import read_seed

    seed_file = tmp_path / "config"
    seed_file.write_text(seed + "VMCTL_SHARES='tag0 rw /a b\ntag1 ro /c'\n")
    values = read_seed(str(seed_file))
    assert values["VMCTL_INSECURE_REGISTRIES"].split() == ["reg.lan:5000", "[fd00::1]:80"]
    assert values["VMCTL_SHARES"] == "tag0 rw /a b\ntag1 ro /c"
    with pytest.raises(VmctlError, match="invalid insecure registry"):
        MachineConfig(name="m1", insecure_registries=("http://x/",)).validate()


# --- bearer tokens ------------------------------------------------------------------------------


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """/v2/ answers 401 with a bearer challenge; /token hands out a token for the right
    password and the scopes asked for; blobs need that token."""

    scopes_asked: list[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802
        port = self.server.server_address[1]
        if self.path.startswith("/token"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            type(self).scopes_asked.append(sorted(query.get("scope", [])))
            good = "Basic " + base64.b64encode(b"me:right").decode()
            if self.headers.get("Authorization") != good:
                self._json(401, {"details": "incorrect username or password"})
                return
            self._json(200, {"token": "tok-" + "+".join(sorted(query.get("scope", [])))})
            return
        if not self.headers.get("Authorization", "").startswith("Bearer tok-repository:x:pull"):
            realm = f'Bearer realm="http://127.0.0.1:{port}/token",service="test"'
            self.send_response(401)
            self.send_header("WWW-Authenticate", realm)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def _json(self, status: int, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_bearer_token_flow(tmp_path: Path) -> None:
    handler = type("Tokens", (_TokenRegistry,), {"scopes_asked": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    name = f"127.0.0.1:{httpd.server_address[1]}"
    options = RegistryOptions(certs_dirs=())
    blob = Descriptor("", BLOB_DIGEST, len(BLOB))
    try:
        right = auth.Credentials("me", "right")
        client = RepositoryClient(resolve(name, options), "x", right, "pull", options)
        assert fetch_blob(client, blob, tmp_path, Progress(None)).read_bytes() == BLOB
        client.add_scope("repository:other:pull")  # a wider token, asked for at once
        assert handler.scopes_asked == [
            ["repository:x:pull"],
            ["repository:other:pull", "repository:x:pull"],
        ]
        client.close()
        wrong = auth.Credentials("me", "wrong")
        client = RepositoryClient(resolve(name, options), "x", wrong, "pull", options)
        with pytest.raises(Unauthorized, match="incorrect username or password"):
            client.request("GET", client.path(f"blobs/{BLOB_DIGEST}"))
        client.close()
    finally:
        httpd.shutdown()
        httpd.server_close()

"""Pull and push against a real registry (Debian's docker-registry), with the docker CLI,
skopeo and the Engine API.

The native agent runs in a private network namespace (`unshare -n`, as the shared fixture
does), so it cannot reach a registry on the host's 127.0.0.1. Rather than give this agent
the host's network (its default bridge and NAT rules would then land on the host), the
registries run INSIDE the agent's namespace (nsenter --net=/proc/<agent>/ns/net), on its
loopback, which this module brings up; skopeo runs there too. The agent gets a certs.d
directory with the test CA, so the TLS registry is verified, not merely trusted.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import registry_server
from tests.docker_suite import DockerCLI
from tests.registry_server import PASSWORD, USER, Registry
from tests.runtime.conftest import (
    REPO,
    NativeAgent,
    _needs_root,
    _wait_ready,
    mounts_under,
    stop_process,
)
from vmctl import native
from vmctl.engine_client import EngineClient


def _tools() -> None:
    _needs_root()
    missing = registry_server.tools_missing()
    if missing:
        message = f"registry tests need {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def reg_agent() -> Iterator[tuple[NativeAgent, int, Path]]:
    """An agent in a private network namespace, told where the test CA will be."""
    _tools()
    root = tempfile.mkdtemp(prefix="vmctl-reg-root-", dir="/var/tmp")
    short = tempfile.mkdtemp(prefix="vr")
    home = tempfile.mkdtemp(prefix="vmctl-home-")
    certs = Path(tempfile.mkdtemp(prefix="vmctl-certs-"))
    sock = Path(short) / "engine.sock"
    log = Path(short) / "agent.log"
    preload = native.preload_archive(Path(root))
    argv = ["unshare", "-n", sys.executable, "-m", "agent", "--socket", str(sock)]
    argv += ["--root", root, "--run-root", f"{short}/run", "--certs-dir", str(certs)]
    argv += ["--preload", str(preload)]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    client = EngineClient(sock)
    env = {**os.environ, "VMCTL_HOST": f"unix://{sock}", "VMCTL_HOME": home}
    env["PYTHONPATH"] = str(REPO)
    try:
        _wait_ready(client, process, log)
        agent = NativeAgent(sock, root, env, client, process.pid)
        agent.netns()  # its loopback up, where the registries listen
        yield agent, process.pid, certs
    finally:
        try:
            stop_process(process)
            leftover = mounts_under(root)
        finally:
            for mount in reversed(mounts_under(root)):
                subprocess.run(["umount", "-l", mount], check=False)
            for path in (root, short, home, str(certs)):
                shutil.rmtree(path, ignore_errors=True)
        assert not leftover, f"mounts left behind: {leftover}"


@pytest.fixture(scope="module")
def plain(reg_agent: tuple[NativeAgent, int, Path]) -> Iterator[Registry]:
    registry = registry_server.start(reg_agent[1])
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def secure(reg_agent: tuple[NativeAgent, int, Path]) -> Iterator[Registry]:
    registry = registry_server.start(reg_agent[1], tls=True)
    assert registry.ca is not None
    target = reg_agent[2] / registry.name
    target.mkdir()
    shutil.copy(registry.ca, target / "ca.crt")
    yield registry
    registry.stop()


@pytest.fixture
def agent(reg_agent: tuple[NativeAgent, int, Path]) -> NativeAgent:
    return reg_agent[0]


@pytest.fixture
def dk(agent: NativeAgent) -> Iterator[DockerCLI]:
    cli = DockerCLI(agent.socket, {**os.environ, "DOCKER_CONFIG": agent.env["VMCTL_HOME"]})
    yield cli
    cli.cleanup()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=120)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(
    agent: NativeAgent, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """An Engine API call; the status and the JSON messages of the answer."""
    conn = _UnixConnection(agent.socket)
    try:
        conn.request(method, target, body=b"", headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        value, position = decoder.raw_decode(text, position)
        messages.append(value)
        while position < len(text) and text[position].isspace():
            position += 1
    return response.status, messages


def auth_header(user: str, password: str) -> dict[str, str]:
    raw = json.dumps({"username": user, "password": password}).encode()
    return {"X-Registry-Auth": base64.urlsafe_b64encode(raw).decode()}


def statuses(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("status") or m.get("error") or "") for m in messages)


def image_ids(agent: NativeAgent) -> set[str]:
    return {image["Id"] for image in agent.client.list_images(all=True)}


def layer_dirs(agent: NativeAgent) -> set[str]:
    return set(os.listdir(Path(agent.root) / "images" / "layers"))


def registry_http(
    registry: Registry, method: str, path: str, body: bytes = b"", content_type: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """A request to the plain registry, made inside its network namespace."""
    script = (
        "import sys, json, urllib.request, urllib.error\n"
        "method, url, ctype = sys.argv[1:4]\n"
        "data = sys.stdin.buffer.read() if method in ('PUT', 'POST') else None\n"
        "req = urllib.request.Request(url, data=data, method=method)\n"
        "req.add_header('Accept', 'application/vnd.docker.distribution.manifest.v2+json')\n"
        "if ctype: req.add_header('Content-Type', ctype)\n"
        "try:\n    r = urllib.request.urlopen(req)\n"
        "except urllib.error.HTTPError as e:\n    r = e\n"
        "out = r.read()\n"
        "sys.stdout.write(json.dumps([r.status, dict(r.headers), out.decode('latin-1')]))\n"
    )
    url = f"http://{registry.name}{path}"
    done = subprocess.run(
        [*registry_server.in_netns(registry.netns_pid), "python3", "-c", script, method, url,
         content_type],
        input=body, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    status, headers, text = json.loads(done.stdout)
    return status, headers, text.encode("latin-1")


# --- docker CLI round trips ---------------------------------------------------------------


def test_docker_push_rmi_pull_plain(dk: DockerCLI, agent: NativeAgent, plain: Registry) -> None:
    name = f"{plain.name}/roundtrip/bb:1"
    dk.ok("tag", "busybox", name)
    out = dk.ok("push", name)
    assert "Pushed" in out and "1: digest: sha256:" in out, out
    again = dk.ok("push", name)
    assert "Layer already exists" in again, again
    dk.ok("rmi", name)
    pulled = dk.ok("pull", name)
    assert "Downloaded newer image for" in pulled and "Digest: sha256:" in pulled, pulled
    assert "Image is up to date" in dk.ok("pull", name)
    inspect = json.loads(dk.ok("image", "inspect", name))[0]
    digest = inspect["RepoDigests"][0].split("@")[1]
    assert inspect["RepoDigests"] == [f"{plain.name}/roundtrip/bb@{digest}"]
    busybox = json.loads(dk.ok("image", "inspect", "busybox"))[0]
    assert inspect["Id"] == busybox["Id"]  # the same config: the same image
    out = dk.ok("run", "--rm", "--network", "none", name, "echo", "pulled and running")
    assert "pulled and running" in out
    # by digest, with the tag gone
    dk.ok("rmi", name)
    by_digest = f"{plain.name}/roundtrip/bb@{digest}"
    dk.ok("pull", by_digest)
    assert json.loads(dk.ok("image", "inspect", by_digest))[0]["Id"] == busybox["Id"]
    # a second repository of the same registry mounts the layer instead of uploading it
    other = f"{plain.name}/elsewhere/bb:2"
    dk.ok("tag", "busybox", other)
    mounted = dk.ok("push", other)
    assert "Mounted from roundtrip/bb" in mounted, mounted
    dk.ok("rmi", other)
    dk.ok("rmi", by_digest)


def test_tls_login_push_pull(dk: DockerCLI, agent: NativeAgent, secure: Registry) -> None:
    name = f"{secure.name}/private/bb:tls"
    dk.ok("tag", "busybox", name)
    refused = dk("push", name)
    assert refused.returncode != 0 and "no basic auth credentials" in refused.stderr
    wrong = dk("login", "-u", USER, "--password-stdin", secure.name, input="wrong\n")
    assert wrong.returncode != 0
    assert "refused the credentials" in wrong.stderr, wrong.stderr
    dk.ok("login", "-u", USER, "--password-stdin", secure.name, input=PASSWORD + "\n")
    out = dk.ok("push", name)
    assert "tls: digest: sha256:" in out, out
    dk.ok("rmi", name)
    assert "Downloaded newer image" in dk.ok("pull", name)
    # through the API, a wrong password is a clear error before any progress
    status, messages = api(
        agent, "POST", f"/images/create?fromImage={secure.name}/private/bb&tag=tls",
        auth_header(USER, "nope"),
    )  # fmt: skip
    assert status == 403 and "refused the credentials" in messages[0]["message"], messages
    dk.ok("logout", secure.name)
    dk.ok("rmi", name)


# --- skopeo interoperability --------------------------------------------------------------


def test_skopeo_copies_in_and_reads_back(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    archive = tmp_path / "busybox.tar"
    archive.write_bytes(dk.raw("save", "busybox"))
    copied = plain.skopeo(
        "copy", *plain.tls_flags("dest"), f"docker-archive:{archive}",
        f"docker://{plain.name}/from-skopeo/bb:1",
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    name = f"{plain.name}/from-skopeo/bb:1"
    dk.ok("pull", name)
    busybox = json.loads(dk.ok("image", "inspect", "busybox"))[0]
    assert json.loads(dk.ok("image", "inspect", name))[0]["Id"] == busybox["Id"]
    dk.ok("rmi", name)
    # ours, read back by skopeo
    ours = f"{plain.name}/for-skopeo/bb:2"
    dk.ok("tag", "busybox", ours)
    pushed = dk.ok("push", ours)
    digest = pushed.split("digest: ")[1].split()[0]
    inspected = plain.skopeo("inspect", *plain.tls_flags(), f"docker://{ours}")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == digest
    layout = tmp_path / "oci"
    back = plain.skopeo("copy", *plain.tls_flags("src"), f"docker://{ours}", f"oci:{layout}:x")
    assert back.returncode == 0, back.stderr
    dk.ok("rmi", ours)


# --- integrity ------------------------------------------------------------------------------


def _push_fresh_image(dk: DockerCLI, name: str, tmp_path: Path, content: str) -> str:
    """An image of its own (one new layer) pushed as ``name``; its id."""
    tar = tmp_path / "layer.tar"
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "file.txt").write_text(content * 1000)
    subprocess.run(["tar", "-C", str(data), "-cf", str(tar), "file.txt"], check=True)
    image_id = dk.ok("import", str(tar), name).strip()
    dk.ok("push", name)
    dk.ok("rmi", name)
    return image_id


def test_tampered_blob_is_refused_and_nothing_stored(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    name = f"{plain.name}/tamper/x:1"
    image_id = _push_fresh_image(dk, name, tmp_path, "tamper me ")
    _, _, body = registry_http(plain, "GET", "/v2/tamper/x/manifests/1")
    layer = json.loads(body)["layers"][0]["digest"]
    blob = plain.blob_file(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    before_ids, before_layers = image_ids(agent), layer_dirs(agent)
    pulled = dk("pull", name)
    assert pulled.returncode != 0
    assert "verification failed" in pulled.stderr + pulled.stdout, pulled
    assert image_ids(agent) == before_ids and image_id not in before_ids
    assert layer_dirs(agent) == before_layers
    assert dk("image", "inspect", name).returncode != 0
    assert not list((Path(agent.root) / "downloads").glob(layer.removeprefix("sha256:") + "*"))


def test_partial_download_resumes_with_a_range(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    name = f"{plain.name}/resume/x:1"
    _push_fresh_image(dk, name, tmp_path, "resume me ")
    _, _, body = registry_http(plain, "GET", "/v2/resume/x/manifests/1")
    layer = json.loads(body)["layers"][0]["digest"]
    content = plain.blob_file(layer).read_bytes()
    downloads = Path(agent.root) / "downloads"
    downloads.mkdir(exist_ok=True)
    partial = downloads / (layer.removeprefix("sha256:") + ".partial")
    # a wrong first half: only a pull that asks for the rest (Range) sees it, and fails
    partial.write_bytes(b"\0" * (len(content) // 2))
    assert dk("pull", name).returncode != 0
    assert not partial.exists()  # a blob that failed verification is not kept
    partial.write_bytes(content[: len(content) // 2])
    assert "Downloaded newer image" in dk.ok("pull", name)
    dk.ok("rmi", name)


# --- manifests ------------------------------------------------------------------------------


def test_multi_arch_index_yields_the_engine_platform(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    dk.ok("tag", "busybox", f"{plain.name}/multi/x:native")
    dk.ok("push", f"{plain.name}/multi/x:native")
    tar = tmp_path / "l.tar"
    (tmp_path / "f").write_text("other arch\n")
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tar), "f"], check=True)
    other = f"{plain.name}/multi/x:other"
    other_id = dk.ok("import", "--platform", "linux/s390x", str(tar), other).strip()
    dk.ok("push", other)
    entries = []
    for tag, arch in (("other", "s390x"), ("native", _native_arch())):
        _, headers, body = registry_http(plain, "GET", f"/v2/multi/x/manifests/{tag}")
        entries.append(
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": headers["Docker-Content-Digest"],
                "size": len(body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }
    status, _, _ = registry_http(
        plain, "PUT", "/v2/multi/x/manifests/both", json.dumps(index).encode(),
        "application/vnd.oci.image.index.v1+json",
    )  # fmt: skip
    assert status == 201
    busybox = json.loads(dk.ok("image", "inspect", "busybox"))[0]["Id"]
    dk.ok("rmi", other)
    dk.ok("pull", f"{plain.name}/multi/x:both")
    assert json.loads(dk.ok("image", "inspect", f"{plain.name}/multi/x:both"))[0]["Id"] == busybox
    dk.ok("pull", "--platform", "linux/s390x", f"{plain.name}/multi/x:both")
    assert json.loads(dk.ok("image", "inspect", f"{plain.name}/multi/x:both"))[0]["Id"] == other_id
    status, messages = api(
        agent,
        "POST",
        f"/images/create?fromImage={plain.name}/multi/x&tag=both&platform=linux/mips64",
    )
    assert status == 404 and "no matching manifest for linux/mips64" in messages[0]["message"]
    for name in ("multi/x:both", "multi/x:native"):
        dk("rmi", f"{plain.name}/{name}")


def _native_arch() -> str:
    from agent.registry.manifest import engine_platform

    return engine_platform().architecture


def test_unknown_repository_is_a_404(agent: NativeAgent, plain: Registry) -> None:
    status, messages = api(agent, "POST", f"/images/create?fromImage={plain.name}/no/such&tag=1")
    # distribution 2.8 answers MANIFEST_UNKNOWN for a repository it never saw, and dockerd
    # words it so; registries that hide repositories (401/403, NAME_UNKNOWN) get "pull
    # access denied for …, repository does not exist or may require 'docker login'"
    assert status == 404
    assert messages[0]["message"].startswith(f"manifest for {plain.name}/no/such:1 not found")


def test_vmctl_pull_and_push(agent: NativeAgent, plain: Registry) -> None:
    name = f"{plain.name}/vmctl/bb:v"
    agent.vmctl("tag", "busybox", name, check=True)
    pushed = agent.vmctl("push", name, check=True)
    assert "digest: sha256:" in pushed.stdout
    agent.vmctl("rmi", name, check=True)
    agent.vmctl("pull", name, check=True)
    assert any(
        name.split("/", 1)[1] in t for i in agent.client.list_images() for t in i["RepoTags"]
    )
    missing = agent.vmctl("pull", f"{plain.name}/vmctl/none:v")
    assert missing.returncode != 0 and "not found" in missing.stderr, missing.stderr
    agent.vmctl("rmi", name, check=True)


# --- several layers, shared bases, speed ------------------------------------------------------


def _layer(directory: Path, name: str, size: int) -> tuple[Path, str]:
    """A layer tar holding one file of ``size`` random-ish bytes; (path, diff id)."""
    content = directory / f"{name}.content"
    content.mkdir()
    # half random, half repetitive: gzip has something to do, but not everything
    data = os.urandom(size // 2) + bytes(size - size // 2)
    (content / f"{name}.bin").write_bytes(data)
    tar = directory / f"{name}.tar"
    subprocess.run(["tar", "-C", str(content), "-cf", str(tar), f"{name}.bin"], check=True)
    return tar, "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()


def _archive(directory: Path, tag: str, layers: list[tuple[Path, str]]) -> Path:
    """A `docker save` archive of an image made of ``layers``."""
    config = {
        "architecture": _native_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [p.name for p, _ in layers]}]
    archive = directory / f"{len(layers)}.archive.tar"
    with tarfile.open(archive, "w") as tar:
        for path, _ in layers:
            tar.add(path, arcname=path.name)
        for name, data in (
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_several_layers_shared_base_and_speed(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    size = 36 << 20  # half of it random: above the monolithic limit once compressed
    layers = [_layer(tmp_path, f"l{i}", size) for i in range(3)]
    small = f"{plain.name}/layers/x:two"
    big = f"{plain.name}/layers/x:three"
    dk.ok("load", "-i", str(_archive(tmp_path, small, layers[:2])))
    dk.ok("load", "-i", str(_archive(tmp_path, big, layers)))
    started = time.monotonic()
    dk.ok("push", small)
    out = dk.ok("push", big)
    push_seconds = time.monotonic() - started
    assert out.count("Layer already exists") == 2 and out.count("Pushed") == 1, out
    ids = {n: json.loads(dk.ok("image", "inspect", n))[0]["Id"] for n in (small, big)}
    dk.ok("rmi", small, big)
    started = time.monotonic()
    dk.ok("pull", small)
    pulled = dk.ok("pull", big)
    pull_seconds = time.monotonic() - started
    assert pulled.count("Already exists") == 2 and "Pull complete" in pulled, pulled
    for name, image_id in ids.items():
        assert json.loads(dk.ok("image", "inspect", name))[0]["Id"] == image_id
    inspect = json.loads(dk.ok("image", "inspect", big))[0]
    assert inspect["RootFS"]["Layers"] == [d for _, d in layers]
    top = Path(inspect["GraphDriver"]["Data"]["UpperDir"]) / "l2.bin"
    assert top.read_bytes() == (tmp_path / "l2.content" / "l2.bin").read_bytes()
    total = 3 * size / 1e6
    print(f"\n{total:.0f} MB of layers: push {push_seconds:.1f} s, pull {pull_seconds:.1f} s")
    assert not list((Path(agent.root) / "downloads").iterdir())  # nothing left behind
    dk.ok("rmi", small, big)


def test_pull_function_for_the_engine_itself(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    """agent.registry.pull.pull (what a Dockerfile's FROM can use), in a store of its own,
    run in the registry's network namespace."""
    name = f"{plain.name}/direct/bb:1"
    dk.ok("tag", "busybox", name)
    dk.ok("push", name)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.images.store import ImageStore\n"
        "from agent.registry.pull import pull\n"
        "root = Path(sys.argv[2])\n"
        "image = pull(sys.argv[1], ImageStore(root / 'images'), root)\n"
        "print(image.id, image.repo_tags, image.repo_digests)\n"
    )
    done = subprocess.run(
        [*registry_server.in_netns(plain.netns_pid), sys.executable, "-c", script, name,
         str(tmp_path / "root")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    busybox = json.loads(dk.ok("image", "inspect", "busybox"))[0]["Id"]
    image_id, rest = done.stdout.split(" ", 1)
    assert image_id == busybox and f"{plain.name}/direct/bb:1" in rest and "@sha256:" in rest
    dk.ok("rmi", name)


def test_build_pulls_a_missing_base_image(
    dk: DockerCLI, agent: NativeAgent, plain: Registry, tmp_path: Path
) -> None:
    """A Dockerfile's FROM names an image the engine lacks: the build pulls it, as docker's
    classic builder does, and shows the pull's progress in the build's output."""
    base = f"{plain.name}/build/base:1"
    base_id = _push_fresh_image(dk, base, tmp_path, "base content")
    assert dk("image", "inspect", base).returncode != 0  # gone from the engine
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY extra.txt /\n")
    (context / "extra.txt").write_text("extra\n")
    tag = f"t-frompull-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        ["docker", "build", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        env={**dk.env, "DOCKER_BUILDKIT": "0"},
    )
    try:
        assert done.returncode == 0, done.stderr
        assert "Pull complete" in done.stdout, done.stdout
        assert json.loads(dk.ok("image", "inspect", base))[0]["Id"] == base_id
        layers = json.loads(dk.ok("image", "inspect", tag))[0]["RootFS"]["Layers"]
        assert len(layers) == 2
    finally:
        dk("rmi", tag, base)

"""Images end to end: registries, builds and commits through the VM.

Debian's docker-registry runs on the host's 127.0.0.1 and is addressed as localhost:PORT,
as a Docker Desktop user would: the guest's engine reaches the host's loopback through
QEMU's user-mode network. Once plain, once over TLS (a throw-away CA, trusted in the guest
through /etc/docker/certs.d as a user would set it up) with htpasswd basic auth.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import registry_server
from tests.e2e.conftest import VM, Engine, require

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tools() -> None:
    for tool in registry_server.tools_missing():
        require(tool)


@pytest.fixture
def plain_registry(tools: None) -> Iterator[registry_server.Registry]:
    registry = registry_server.start(os.getpid())  # the host's own network namespace
    yield registry
    registry.stop()


@pytest.fixture
def tls_registry(tools: None, running_vm: VM) -> Iterator[registry_server.Registry]:
    registry = registry_server.start(os.getpid(), tls=True)
    assert registry.ca is not None
    certs = f"/etc/docker/certs.d/localhost:{registry.port}"
    ca = registry.ca.read_text()
    running_vm.vmctl(
        "machine", "ssh", running_vm.name, "--", "sh", "-c",
        f"mkdir -p {certs} && cat > {certs}/ca.crt", input=ca, timeout=120,
    )  # fmt: skip
    yield registry
    running_vm.ssh(f"rm -rf /etc/docker/certs.d/localhost:{registry.port}", check=False)
    registry.stop()


def localhost(registry: registry_server.Registry, path: str) -> str:
    return f"localhost:{registry.port}/{path}"


def test_push_rmi_pull_round_trip_plain(
    engine: Engine, plain_registry: registry_server.Registry
) -> None:
    ref = localhost(plain_registry, "e2e/bb:1")
    engine.images.append(ref)
    engine.ok("tag", "busybox", ref)
    pushed = engine.ok("push", ref)
    assert "digest: sha256:" in pushed
    engine.ok("rmi", ref)
    pulled = engine.ok("pull", ref)
    assert "Downloaded newer image" in pulled
    out = engine.ok("run", "--rm", "--name", engine.name("pulled"), ref, "echo", "pulled ok")
    assert out == "pulled ok\n"
    # what we pushed reads back with skopeo, under the same digest
    raw = plain_registry.skopeo(
        "inspect", "--tls-verify=false", f"docker://127.0.0.1:{plain_registry.port}/e2e/bb:1"
    )
    assert raw.returncode == 0, raw.stderr
    digest = json.loads(raw.stdout)["Digest"]
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in engine.inspect(ref)["RepoDigests"]


def test_skopeo_copied_image_pulls_and_a_tampered_blob_is_refused(
    engine: Engine, plain_registry: registry_server.Registry, tmp_path: Path
) -> None:
    archive = tmp_path / "bb.tar"
    archive.write_bytes(engine.raw("save", "busybox"))
    copy = plain_registry.skopeo(
        "copy", "--dest-tls-verify=false", f"docker-archive:{archive}:busybox:latest",
        f"docker://127.0.0.1:{plain_registry.port}/e2e/copied:1",
    )  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    ref = localhost(plain_registry, "e2e/copied:1")
    engine.images.append(ref)
    engine.ok("pull", ref)
    assert engine.inspect(ref)["Id"] == engine.inspect("busybox")["Id"]

    # an image whose top layer the engine holds nowhere else, so the pull must fetch it
    unique = localhost(plain_registry, "e2e/unique:1")
    engine.images.append(unique)
    maker = engine.name("maker")
    engine.ok("run", "--name", maker, "busybox", "sh", "-c",
              "head -c 65536 /dev/urandom > /random.bin")  # fmt: skip
    engine.ok("commit", maker, unique)
    engine.ok("rm", maker)
    engine.ok("push", unique)
    engine.ok("rmi", unique)
    manifest = json.loads(
        plain_registry.skopeo(
            "inspect", "--raw", "--tls-verify=false",
            f"docker://127.0.0.1:{plain_registry.port}/e2e/unique:1",
        ).stdout
    )  # fmt: skip
    blob = plain_registry.blob_file(manifest["layers"][-1]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    refused = engine("pull", unique)
    assert refused.returncode != 0
    assert "digest" in refused.stderr.lower() or "verif" in refused.stderr.lower(), refused.stderr
    assert engine.ok("images", "-q", unique).strip() == ""


def test_login_push_pull_over_tls_with_basic_auth(
    engine: Engine, tls_registry: registry_server.Registry
) -> None:
    ref = localhost(tls_registry, "e2e/secret:1")
    host = f"localhost:{tls_registry.port}"
    engine.images.append(ref)
    engine.ok("tag", "busybox", ref)
    denied = engine("push", ref)
    assert denied.returncode != 0 and "Traceback" not in denied.stderr
    login = engine(
        "login", host, "-u", registry_server.USER, "--password-stdin",
        input=registry_server.PASSWORD,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    try:
        engine.ok("push", ref)
        engine.ok("rmi", ref)
        engine.ok("pull", ref)
        assert engine.ok("run", "--rm", "--name", engine.name("tls"), ref, "echo", "ok") == "ok\n"
    finally:
        engine("logout", host)


BUILD_FILES = {
    "Dockerfile": """\
ARG BASE=busybox
FROM ${BASE} AS builder
ARG GREETING=hello
WORKDIR /src
COPY greeting.txt ./
RUN echo "$GREETING from the first stage" > made.txt && cat greeting.txt >> made.txt

FROM busybox
LABEL org.example.test=e2e
ENV APP_HOME=/app
WORKDIR $APP_HOME
COPY --from=builder /src/made.txt ./
ADD files.tar ./unpacked/
RUN echo 'appuser:x:1234:1234::/app:/bin/sh' >> /etc/passwd && rm -rf /home
USER appuser
EXPOSE 8080
VOLUME /data
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-c"]
HEALTHCHECK --interval=30s CMD true
ONBUILD RUN echo child
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/made.txt /app/unpacked/inner.txt"]
""",
    "greeting.txt": "context file\n",
}


def make_context(directory: Path) -> None:
    for name, text in BUILD_FILES.items():
        (directory / name).write_text(text)
    inner = directory / "inner.txt"
    inner.write_text("from the tarball\n")
    subprocess.run(["tar", "-cf", str(directory / "files.tar"), "-C", str(directory), "inner.txt"],
                   check=True)  # fmt: skip
    inner.unlink()


def test_multi_stage_build_runs_and_rebuilds_from_cache(engine: Engine, tmp_path: Path) -> None:
    make_context(tmp_path)
    tag = f"e2e-build-{uuid.uuid4().hex[:8]}"
    engine.images.append(tag)
    env_build = ["build", "--build-arg", "GREETING=hi", "-t", tag, str(tmp_path)]
    first = engine("build", *env_build[1:], timeout=600)
    assert first.returncode == 0, first.stderr
    image_id = engine.inspect(tag)["Id"]
    out = engine.ok("run", "--rm", "--name", engine.name("built"), tag)
    assert out == "hi from the first stage\ncontext file\nfrom the tarball\n"
    config = engine.inspect(tag)["Config"]
    assert config["User"] == "appuser" and config["WorkingDir"] == "/app"
    assert config["Labels"]["org.example.test"] == "e2e"

    again = engine.ok(*env_build, timeout=600)
    steps = again.count("Step ")
    # every step from the cache but the ARG before the first FROM and the two FROMs
    assert steps > 10 and again.count("Using cache") == steps - 3
    assert engine.inspect(tag)["Id"] == image_id

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "Dockerfile").write_text("FROM busybox\nCOPY ../greeting.txt /\n")
    refused = engine("build", str(tmp_path / "outside"))
    assert refused.returncode != 0
    assert "outside" in refused.stderr.lower() or "forbidden" in refused.stderr.lower()


def test_commit_keeps_deleted_files_deleted(engine: Engine) -> None:
    name = engine.name("commit")
    engine.ok("run", "--name", name, "busybox", "sh", "-c",
              "rm -rf /home /bin/vi && echo kept > /new.txt")  # fmt: skip
    tag = f"e2e-commit-{uuid.uuid4().hex[:8]}"
    engine.images.append(tag)
    engine.ok("commit", name, tag)
    out = engine.ok("run", "--rm", "--name", engine.name("committed"), tag, "sh", "-c",
                    "cat /new.txt; ls -d /home /bin/vi 2>&1 || true")  # fmt: skip
    assert out.startswith("kept\n")
    assert "No such file" in out and out.count("No such file") == 2

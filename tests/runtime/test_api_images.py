"""Image endpoints as a user meets them: the real docker CLI (and vmctl) against a native
agent (root). Where Debian's dockerd is installed, archives also travel between it and us.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_suite import DOCKER, DockerCLI, sdk_client
from tests.runtime.conftest import REPO, TIMEOUT, NativeAgent, mounts_under
from vmctl.engine_client import EngineError

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

HOST_BUSYBOX = Path("/bin/busybox")


def rootfs_tarball(marker: str) -> bytes:
    """A small root filesystem as `docker export` would write it, gzip-compressed: busybox,
    a shell, and /etc/marker holding ``marker`` (so each one is a new layer)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None = None, mode: int = 0o644, link: str = "") -> None:
            member = tarfile.TarInfo(name)
            member.mtime, member.mode = 1_700_000_000, mode
            if data is None and not link:
                member.type = tarfile.DIRTYPE
            elif link:
                member.type, member.linkname = tarfile.SYMTYPE, link
            else:
                member.size = len(data or b"")
            tar.addfile(member, io.BytesIO(data) if data else None)

        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            add(directory, mode=0o755)
        add("bin/busybox", HOST_BUSYBOX.read_bytes(), 0o755)
        for applet in ("sh", "cat", "echo", "ls"):
            add(f"bin/{applet}", link="busybox")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", b"root:x:0:\n")
        add("etc/marker", marker.encode())
    return gzip.compress(buffer.getvalue())


def import_image(dk: DockerCLI, name: str = "", *changes: str, message: str = "") -> str:
    """`docker import` a fresh rootfs from stdin; the new image's id."""
    args = ["import"]
    for change in changes:
        args += ["-c", change]
    if message:
        args += ["-m", message]
    args += ["-", *([name] if name else [])]
    image_id = dk.raw(*args, stdin=rootfs_tarball(name or uuid.uuid4().hex)).decode().strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71, image_id
    dk.images.append(image_id)
    return image_id


def image_ids(dk: DockerCLI) -> set[str]:
    return set(dk.ok("images", "-a", "-q", "--no-trunc").split())


def busybox_id(dk: DockerCLI) -> str:
    return dk.ok("image", "inspect", "-f", "{{.Id}}", "busybox").strip()


def vmctl_bytes(
    agent: NativeAgent, *argv: str, stdin: bytes | None = None
) -> tuple[int, bytes, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.cli", *argv],
        input=stdin,
        capture_output=True,
        env=agent.env,
        cwd=REPO,
        timeout=TIMEOUT,
    )
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


# --- list, inspect, history, tag, rmi ----------------------------------------------------


def test_images_inspect_and_history(dk: DockerCLI) -> None:
    table = dk.ok("images").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = next(line.split() for line in table[1:] if line.startswith("busybox "))
    assert row[1] == "latest" and row[-1].endswith("MB")
    [image] = json.loads(dk.ok("image", "inspect", "busybox"))
    assert image["Id"].startswith("sha256:") and row[2] == image["Id"][7:19]
    assert image["RepoTags"] == ["busybox:latest"]
    assert image["Config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in image["Config"]["Env"])
    assert (image["Os"], image["RootFS"]["Type"]) == ("linux", "layers")
    assert len(image["RootFS"]["Layers"]) == 1 and image["Size"] > 1_000_000
    history = dk.ok("history", "--no-trunc", "busybox").splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]
    assert history[1].startswith(image["Id"]) and "vmctl image builder" in history[1]
    missing = dk("image", "inspect", "nothere")
    assert missing.returncode == 1 and "No such image: nothere:latest" in missing.stderr


def test_tag_and_rmi(dk: DockerCLI, agent: NativeAgent) -> None:
    alias = f"t-tag-{uuid.uuid4().hex[:8]}"
    dk.images.append(f"{alias}:v1")
    dk.ok("tag", "busybox", f"{alias}:v1")
    listed = dk.ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", alias)
    assert listed == f"{alias}:v1 {busybox_id(dk)[7:19]}\n"
    # the engine's own checks, behind the CLI's
    with pytest.raises(EngineError, match="must be lowercase") as bad:
        agent.client.tag_image("busybox", "Bad")
    assert bad.value.status == 400
    with pytest.raises(EngineError, match="No such image: nothere:latest") as missing:
        agent.client.tag_image("nothere", "x")
    assert missing.value.status == 404
    assert dk.ok("rmi", f"{alias}:v1") == f"Untagged: {alias}:v1\n"
    assert busybox_id(dk)  # the image stays: busybox still names it


def test_rmi_of_an_image_a_container_uses(dk: DockerCLI) -> None:
    name = f"t-used-{uuid.uuid4().hex[:8]}:1"
    image_id = import_image(dk, name, 'CMD ["true"]')
    container = dk.name("user")
    dk.ok("create", "--name", container, name)
    refused = dk("rmi", name)
    assert refused.returncode == 1
    assert f'unable to remove repository reference "{name}" (must force)' in refused.stderr
    assert "being used by stopped container" in refused.stderr
    by_id = dk("rmi", image_id[7:19])
    assert by_id.returncode == 1 and "(must be forced)" in by_id.stderr
    assert dk.ok("rmi", "-f", name) == f"Untagged: {name}\n"
    assert image_id in dk.ok("images", "-q", "--no-trunc", "-f", "dangling=true").split()
    dk.ok("rm", container)
    deleted = dk.ok("rmi", image_id).splitlines()
    assert deleted[0] == f"Deleted: {image_id}" and len(deleted) == 2  # and its layer
    assert image_id not in image_ids(dk)


# --- save and load ---------------------------------------------------------------------------


def test_save_piped_into_load(dk: DockerCLI) -> None:
    before = busybox_id(dk)
    save = subprocess.Popen([DOCKER, "save", "busybox"], stdout=subprocess.PIPE, env=dk.env)
    load = subprocess.run(
        [DOCKER, "load"], stdin=save.stdout, capture_output=True, text=True, env=dk.env
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(TIMEOUT) == 0 and load.returncode == 0, load.stderr
    assert load.stdout == "Loaded image: busybox:latest\n"
    assert busybox_id(dk) == before


def test_save_to_a_file_and_load_into_a_fresh_state(dk: DockerCLI, tmp_path: Path) -> None:
    name = f"t-save-{uuid.uuid4().hex[:8]}:1"
    image_id = import_image(dk, name, 'CMD ["cat", "/etc/marker"]')
    archive = tmp_path / "images.tar"
    dk.ok("save", "-o", str(archive), name, "busybox")
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= members
    assert f"blobs/sha256/{image_id[7:]}" in members
    assert sorted(t for item in manifest for t in item["RepoTags"]) == ["busybox:latest", name]
    assert {d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]} == {
        "1",
        "latest",
    }
    removed = dk.ok("rmi", name).splitlines()
    assert removed[:2] == [f"Untagged: {name}", f"Deleted: {image_id}"]
    assert len(removed) == 3, removed  # its own layer went too
    loaded = dk.ok("load", "-i", str(archive)).splitlines()
    assert sorted(loaded) == ["Loaded image: busybox:latest", f"Loaded image: {name}"]
    assert dk.ok("image", "inspect", "-f", "{{.Id}}", name).strip() == image_id
    assert dk.ok("run", "--rm", name) == name


def test_broken_archives_are_refused_and_store_nothing(
    dk: DockerCLI, agent: NativeAgent, tmp_path: Path
) -> None:
    image_id = import_image(dk)
    archive = tmp_path / "image.tar"
    dk.ok("save", "-o", str(archive), image_id)
    dk.ok("rmi", image_id)  # its layer goes too: a load must check the one in the archive
    before = image_ids(dk)
    data = archive.read_bytes()
    # the layer blob, tampered with: same size, other bytes
    with tarfile.open(archive) as tar:
        blob = max(tar.getmembers(), key=lambda m: m.size)
    tampered = bytearray(data)
    tampered[blob.offset_data + blob.size // 2] ^= 0xFF
    cases = {
        "truncated": data[: len(data) // 2],
        "garbage": b"this is not a tarball\n" * 100,
        "tampered": bytes(tampered),
    }
    for what, body in cases.items():
        proc = subprocess.run(
            [DOCKER, "load"], input=body, capture_output=True, env=dk.env, timeout=TIMEOUT
        )
        err = proc.stderr.decode()
        assert proc.returncode == 1, (what, err)
        assert err.startswith("Error response from daemon: "), (what, err)
        assert "Traceback" not in err
    assert image_ids(dk) == before
    assert list((Path(agent.root) / "images" / "tmp").iterdir()) == []


# --- import, pull ---------------------------------------------------------------------------


def test_import_with_changes_then_run(dk: DockerCLI) -> None:
    name = f"t-imp-{uuid.uuid4().hex[:8]}:1"
    image_id = import_image(
        dk,
        name,
        "ENV GREETING=hello",
        'CMD ["sh", "-c", "echo $GREETING from $(cat /etc/marker)"]',
        message="made by a test",
    )
    assert dk.ok("run", "--rm", name) == f"hello from {name}\n"
    [image] = json.loads(dk.ok("image", "inspect", name))
    assert image["Id"] == image_id and image["Comment"] == "made by a test"
    assert image["Config"]["Env"] == ["GREETING=hello"]
    history = dk.ok("history", "--format", "{{.Comment}}", name)
    assert history == "made by a test\n"
    untagged = import_image(dk)
    assert dk.ok("history", "--format", "{{.Comment}}", untagged) == "Imported from -\n"
    assert untagged in dk.ok("images", "-q", "--no-trunc", "-f", "dangling=true").split()
    refused = dk("import", "-c", "RUN make", "-", input="x")
    assert refused.returncode == 1 and "RUN is not a valid change command" in refused.stderr


def test_run_of_an_unknown_image_exits_125(dk: DockerCLI) -> None:
    run = dk("run", "--rm", "nosuchimage:1.0", "true")
    assert run.returncode == 125, run.stderr
    assert "Unable to find image 'nosuchimage:1.0' locally" in run.stderr
    # the agent's private network namespace has no way out: the registry is unreachable
    assert "cannot reach registry registry-1.docker.io" in run.stderr, run.stderr
    pull = dk("pull", "example.com/some/image:2")
    assert pull.returncode == 1 and "cannot reach registry example.com" in pull.stderr


# --- filters and prune ------------------------------------------------------------------------


def test_list_filters(dk: DockerCLI) -> None:
    tag = uuid.uuid4().hex[:8]
    labeled = import_image(dk, f"t-filter-{tag}:1", f"LABEL suite=filter-{tag}")
    dangling = import_image(dk)

    def ids(*args: str) -> set[str]:
        return set(dk.ok("images", "-q", "--no-trunc", *args).split())

    assert dangling in ids("-f", "dangling=true") and labeled not in ids("-f", "dangling=true")
    assert ids("-f", f"label=suite=filter-{tag}") == {labeled}
    assert ids("-f", f"reference=t-filter-{tag}:*") == {labeled}
    assert ids(f"t-filter-{tag}") == {labeled}
    assert busybox_id(dk) in ids("-f", f"before=t-filter-{tag}:1")
    assert dangling in ids("-f", f"since=t-filter-{tag}:1")
    bad = dk("images", "-f", "colour=blue")
    assert bad.returncode == 1 and "invalid filter 'colour'" in bad.stderr


def test_prune(dk: DockerCLI) -> None:
    tag = uuid.uuid4().hex[:8]
    dangling = import_image(dk)
    labeled = import_image(dk, f"t-prune-{tag}:1", f"LABEL suite=prune-{tag}")
    pruned = dk.ok("image", "prune", "-f")
    assert f"deleted: {dangling}" in pruned and "Total reclaimed space: " in pruned
    assert "Total reclaimed space: 0B" not in pruned
    assert labeled in image_ids(dk) and dangling not in image_ids(dk)
    everything = dk.ok("image", "prune", "-a", "-f", "--filter", f"label=suite=prune-{tag}")
    assert f"untagged: t-prune-{tag}:1" in everything and f"deleted: {labeled}" in everything
    assert labeled not in image_ids(dk)
    assert busybox_id(dk)  # unlabelled: kept


def test_the_python_sdk(dk: DockerCLI) -> None:
    docker = pytest.importorskip("docker")
    client = sdk_client(dk)
    busybox = client.images.get("busybox")
    assert busybox.tags == ["busybox:latest"] and busybox.id == busybox_id(dk)
    assert busybox.id in [image.id for image in client.images.list()]
    alias = f"t-sdk-{uuid.uuid4().hex[:8]}"
    dk.images.append(f"{alias}:1")
    assert busybox.tag(alias, "1")
    archive = b"".join(client.images.get(f"{alias}:1").save(named=f"{alias}:1"))
    client.images.remove(f"{alias}:1")
    [loaded] = client.images.load(archive)
    assert loaded.id == busybox.id and f"{alias}:1" in loaded.tags
    assert busybox.history()[0]["Id"] == busybox.id
    with pytest.raises(docker.errors.APIError, match="cannot reach registry"):
        client.images.pull("nosuchimage", tag="1.0")
    assert client.images.prune(filters={"dangling": True})["SpaceReclaimed"] >= 0
    client.close()


# --- vmctl ----------------------------------------------------------------------------------------


def test_vmctl_image_verbs(agent: NativeAgent, dk: DockerCLI, tmp_path: Path) -> None:
    for args in (["busybox"], ["-q"], ["--no-trunc", "busybox"], ["--format", "json", "busybox"]):
        ours = agent.vmctl("images", *args, check=True).stdout
        assert ours == dk.ok("images", *args), args
    alias = f"t-vm-{uuid.uuid4().hex[:8]}:x"
    dk.images.append(alias)
    agent.vmctl("tag", "busybox", alias, check=True)
    assert dk.ok("images", "-q", alias).strip() == busybox_id(dk)[7:19]
    removed = agent.vmctl("rmi", alias, "nothere")
    assert removed.returncode == 1 and removed.stdout == f"Untagged: {alias}\n"
    assert "error: No such image: nothere:latest" in removed.stderr

    archive = tmp_path / "saved.tar"
    agent.vmctl("save", "-o", str(archive), "busybox", check=True)
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames() and "oci-layout" in tar.getnames()
    assert [p.name for p in tmp_path.iterdir()] == ["saved.tar"]  # no temp file left
    code, tarball, err = vmctl_bytes(agent, "save", "busybox")
    assert code == 0 and tarball == archive.read_bytes(), err  # the same image, the same bytes
    code, out, err = vmctl_bytes(agent, "load", stdin=tarball)
    assert (code, out) == (0, b"Loaded image: busybox:latest\n"), err
    loaded = agent.vmctl("load", "-i", str(archive), check=True)
    assert loaded.stdout == "Loaded image: busybox:latest\n"
    code, _, err = vmctl_bytes(agent, "load", stdin=b"garbage" * 100)
    assert code == 1 and err.startswith("error: not a valid image archive"), err

    # no tarball onto a terminal, no load from one
    for argv in (["save", "busybox"], ["load"]):
        pid, master = pty.fork()
        if pid == 0:
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "vmctl.cli", *argv], agent.env)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                shown += chunk
        _, status = os.waitpid(pid, 0)
        os.close(master)
        assert os.waitstatus_to_exitcode(status) == 1, shown
        assert b"refusing to save to a terminal" in shown or b"stdin is empty" in shown, shown


# --- with dockerd ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerd(agent: NativeAgent) -> Iterator[DockerCLI]:
    """Debian's dockerd (20.10) in a throw-away root, for archives both ways."""
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    root = tempfile.mkdtemp(prefix="vmctl-dockerd-", dir="/var/tmp")
    short = tempfile.mkdtemp(prefix="dd")
    sock = Path(short) / "docker.sock"
    argv = ["dockerd", "--iptables=false", "--bridge=none", "-H", f"unix://{sock}"]
    argv += ["--data-root", root, "--exec-root", f"{short}/exec", "--pidfile", f"{short}/pid"]
    log = Path(short) / "dockerd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    env = {**os.environ, "DOCKER_CONFIG": agent.env["VMCTL_HOME"], "DOCKER_BUILDKIT": "0"}
    cli = DockerCLI(sock, env)
    try:
        deadline = time.monotonic() + 60
        while cli("version").returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"dockerd did not start here:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield cli
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        for mount in reversed(mounts_under(root) + mounts_under(short)):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


DOCKERFILE = """\
FROM busybox
RUN mkdir -p /opt/app/sub && echo hello > /opt/app/a.txt && echo x > /opt/app/sub/b \\
 && ln /opt/app/a.txt /opt/app/hard && ln -s a.txt /opt/app/soft
RUN rm /opt/app/sub/b && rm -rf /opt/app/soft && echo changed > /opt/app/a.txt
ENV FOO=bar
CMD ["cat", "/opt/app/a.txt"]
"""


def test_archives_travel_between_dockerd_and_us(
    dk: DockerCLI, dockerd: DockerCLI, tmp_path: Path
) -> None:
    ours_archive = tmp_path / "ours.tar"
    dk.ok("save", "-o", str(ours_archive), "busybox")
    assert dockerd.ok("load", "-i", str(ours_archive)) == "Loaded image: busybox:latest\n"
    assert busybox_id(dockerd) == busybox_id(dk)
    assert dockerd.ok("run", "--rm", "--network", "none", "busybox", "echo", "hi") == "hi\n"

    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    name = f"t-multi-{uuid.uuid4().hex[:8]}:1"
    dockerd.ok("build", "-q", "-t", name, str(context))
    theirs = tmp_path / "theirs.tar"
    dockerd.ok("save", "-o", str(theirs), name)
    dk.images.append(name)
    assert dk.ok("load", "-i", str(theirs)) == f"Loaded image: {name}\n"
    image_id = dockerd.ok("image", "inspect", "-f", "{{.Id}}", name).strip()
    assert dk.ok("image", "inspect", "-f", "{{.Id}}", name).strip() == image_id
    assert dk.ok("run", "--rm", name) == "changed\n"
    listing = dk.ok("run", "--rm", name, "ls", "-A", "/opt/app", "/opt/app/sub")
    assert listing == "/opt/app:\na.txt\nhard\nsub\n\n/opt/app/sub:\n"  # whiteouts applied

    # and back: every layer byte for byte what dockerd wrote
    again = tmp_path / "again.tar"
    dk.ok("save", "-o", str(again), name)
    with tarfile.open(theirs) as original, tarfile.open(again) as saved:
        manifest = json.load(original.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(original.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        diff_ids = config["rootfs"]["diff_ids"]
        assert len(diff_ids) == 3
        for path, diff_id in zip(manifest["Layers"], diff_ids, strict=True):
            theirs_layer = original.extractfile(path).read()  # type: ignore[union-attr]
            ours_layer = saved.extractfile(f"blobs/sha256/{diff_id[7:]}").read()  # type: ignore[union-attr]
            assert ours_layer == theirs_layer, path
    dockerd.ok("rmi", name)
    assert dockerd.ok("load", "-i", str(again)) == f"Loaded image: {name}\n"
    assert dockerd.ok("image", "inspect", "-f", "{{.Id}}", name).strip() == image_id

"""`docker commit` against the agent running natively on this host (root)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass

import pytest

from agent.containers.manager import ContainerManager
from agent.images.commit import commit_container
from agent.images.store import ImageStore
from tests.docker_suite import DockerCLI
from tests.runtime.conftest import Engine, NativeAgent
from vmctl.engine_client import EngineError

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    if os.environ.get("CI") == "true":
        pytest.fail("the commit tests need root", pytrace=False)
    pytest.skip("running containers needs root", allow_module_level=True)

CHANGES = (
    "echo new > /new.txt && echo changed >> /etc/passwd && rm /etc/group"
    " && rm -rf /var/www && rm -rf /var/spool && mkdir /var/spool && echo z > /var/spool/z"
    " && mkdir -p /d/e && echo deep > /d/e/f && ln /new.txt /hard && ln -s new.txt /sym"
    " && chmod 0600 /d/e/f && echo vol > /data/in-volume"
)


def _top_layer(dk: DockerCLI, image: str) -> dict[str, tarfile.TarInfo]:
    """The entries of the image's top layer, read back through `docker save`."""
    with tarfile.open(fileobj=io.BytesIO(dk.raw("save", image))) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = archive.extractfile(manifest[0]["Layers"][-1])
        assert layer is not None
        data = layer.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def test_commit_keeps_added_modified_and_deleted_files(dk: DockerCLI) -> None:
    source = dk.name("src")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok("run", "--name", source, "-v", "/data", "busybox", "sh", "-c", CHANGES)
    diff_before = dk.ok("diff", source)
    image_id = dk.ok("commit", "-m", "my change", "-a", "tester", source, image).strip()
    assert image_id.startswith("sha256:")
    assert dk.ok("diff", source) == diff_before  # the commit changed nothing in the container

    check = (
        "cat /new.txt; tail -n 1 /etc/passwd; cat /d/e/f; cat /var/spool/z; readlink /sym;"
        " stat -c '%a %h' /d/e/f /new.txt;"
        " for p in /etc/group /var/www /var/spool/mail /data/in-volume; do"
        " test -e $p && echo still $p; done; true"
    )
    out = dk.ok("run", "--rm", image, "sh", "-c", check)
    assert out.splitlines() == ["new", "changed", "deep", "z", "new.txt", "600 1", "644 2"]

    layer = _top_layer(dk, image)
    assert "etc/.wh.group" in layer and "var/.wh.www" in layer
    assert "var/spool/.wh..wh..opq" in layer and "var/spool/z" in layer
    assert layer["hard"].islnk() or layer["new.txt"].islnk()
    assert layer["sym"].issym() and layer["sym"].linkname == "new.txt"
    # nothing of the runtime's mounts: the managed /etc files, the volume, /proc and /sys
    for leaked in ("etc/hosts", "etc/hostname", "etc/resolv.conf", "data", "proc", "sys"):
        assert leaked not in layer, leaked
    assert not any(name.startswith("data/") for name in layer)

    history = dk.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}", image)
    assert history.splitlines()[0] == f"sh -c {CHANGES}|my change"
    inspect = dk.inspect(image)
    assert inspect["Author"] == "tester"
    assert inspect["Config"]["Cmd"] == ["sh", "-c", CHANGES]


def test_commit_changes_apply_to_the_config(dk: DockerCLI) -> None:
    source = dk.name("src")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok("run", "--name", source, "-e", "KEPT=1", "busybox", "true")
    dk.ok(
        "commit",
        "--change",
        'CMD ["echo","hi"]',
        "-c",
        "ENV GREETING=hello",
        "-c",
        "WORKDIR /tmp",
        source,
        f"{image}:v1",
    )
    assert dk.ok("run", "--rm", f"{image}:v1") == "hi\n"
    env = dk.ok("run", "--rm", f"{image}:v1", "sh", "-c", "echo $GREETING $KEPT; pwd")
    assert env.splitlines() == ["hello 1", "/tmp"]
    config = dk.inspect(f"{image}:v1")["Config"]
    assert config["Cmd"] == ["echo", "hi"] and "GREETING=hello" in config["Env"]
    until = str(int(time.time()) + 1)
    events = dk.ok(
        "events", "--since", "0", "--until", until, "--filter", f"container={source}",
        "--filter", "event=commit", "--format", "{{.Actor.Attributes.imageID}}",
    )  # fmt: skip
    assert events.split() == [dk.inspect(f"{image}:v1")["Id"]]


def test_commit_of_a_running_container(dk: DockerCLI) -> None:
    source = dk.name("run")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok(
        "run", "-d", "--name", source, "busybox", "sh", "-c",
        "echo running > /state && exec sleep 300",
    )  # fmt: skip
    for _ in range(100):
        if dk("exec", source, "cat", "/state").stdout == "running\n":
            break
    dk.ok("commit", source, image)
    assert dk.inspect(source)["State"]["Status"] == "running"
    assert dk.ok("run", "--rm", image, "cat", "/state") == "running\n"


def test_commit_of_an_unchanged_container_makes_an_image(dk: DockerCLI) -> None:
    source = dk.name("same")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok("create", "--name", source, "busybox", "true")
    dk.ok("commit", source, image)
    assert _top_layer(dk, image) == {}
    history = dk.ok("history", "-q", image).split()
    assert len(history) == 2


def test_commit_refuses_unknown_containers_and_bad_input(dk: DockerCLI) -> None:
    missing = dk("commit", "no-such-container-x", "whatever")
    assert missing.returncode != 0
    assert "No such container: no-such-container-x" in missing.stderr
    source = dk.name("bad")
    dk.ok("create", "--name", source, "busybox", "true")
    bad_change = dk("commit", "-c", "RUN echo no", source)
    assert bad_change.returncode != 0 and "RUN is not a valid change command" in bad_change.stderr
    bad_ref = dk("commit", source, "UPPER:case")
    assert bad_ref.returncode != 0 and "Traceback" not in bad_ref.stderr


def test_vmctl_commit_and_the_api_status(agent: NativeAgent, dk: DockerCLI) -> None:
    source = dk.name("vm")
    image = dk.name("img")
    dk.images.append(image)
    dk.ok("run", "--name", source, "busybox", "sh", "-c", "echo from-vmctl > /made")
    result = agent.vmctl(
        "commit", "-c", "CMD cat /made", "-m", "by vmctl", source, f"{image}:t1", check=True
    )
    image_id = result.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert dk.ok("run", "--rm", f"{image}:t1") == "from-vmctl\n"
    assert dk.inspect(f"{image}:t1")["Id"] == image_id
    missing = agent.vmctl("commit", "no-such-container-y")
    assert missing.returncode != 0 and "No such container: no-such-container-y" in missing.stderr
    with pytest.raises(EngineError) as error:
        agent.client.commit_container("no-such-container-y")
    assert error.value.status == 404
    with pytest.raises(EngineError) as error:
        agent.client.commit_container(source, changes=["HEALTHCHECK --bogus=1 CMD true"])
    assert error.value.status == 400


@dataclass
class _Engine:
    containers: ContainerManager
    images: ImageStore


def test_builder_commit_without_changes_adds_no_layer(engine: Engine) -> None:
    """What the Dockerfile builder asks for: an exact config and no empty layers."""
    target = _Engine(engine.manager, engine.images)
    unchanged = engine.run(["true"]).container
    parent = engine.images.get("busybox")
    config = {"Cmd": ["sh"], "Env": ["A=1"], "Labels": {"step": "1"}}
    image_id = commit_container(
        target,
        unchanged.id,
        config_override=config,
        created_by="/bin/sh -c #(nop) LABEL step=1",
        empty_layer_ok=False,
        changes=["ENV B=2"],
    )
    image = engine.images.get(image_id)
    assert image.diff_ids == parent.diff_ids
    assert image.config["config"] == {**config, "Env": ["A=1", "B=2"]}
    assert image.config["history"][-1]["empty_layer"] is True
    assert image.config["history"][-1]["created_by"] == "/bin/sh -c #(nop) LABEL step=1"

    changed = engine.sh("echo x > /x").container
    image_id = commit_container(target, changed.id, reference="built:one", empty_layer_ok=False)
    image = engine.images.get("built:one")
    assert image.id == image_id and len(image.diff_ids) == len(parent.diff_ids) + 1
    assert (image.layer_dirs[-1] / "x").read_text() == "x\n"
    assert "empty_layer" not in image.config["history"][-1]
    assert image.config["config"]["Cmd"] == ["sh", "-c", "echo x > /x"]

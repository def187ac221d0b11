"""The preloaded busybox image: docker-save and OCI layout views agree."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from images.busybox import add_applet_links, build_container_image, build_layer
from images.tree import File, Symlink, Tree

APPLETS = [
    "bin/sh",
    "bin/ls",
    "usr/bin/awk",
    "sbin/ip",
    "sbin/modprobe",
    "usr/sbin/nologin",
    "linuxrc",
    "bin/busybox",
]


def members(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    result = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        for info in archive:
            stream = archive.extractfile(info) if info.isreg() else None
            result[info.name] = (info, stream.read() if stream else b"")
    return result


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_layer_has_busybox_and_hard_links_in_bin() -> None:
    layer = members(build_layer(b"BUSYBOX", APPLETS, 0))
    assert layer["bin/busybox"][1] == b"BUSYBOX"
    for name in ("sh", "ls", "awk", "ip", "nologin"):
        info = layer[f"bin/{name}"][0]
        assert info.islnk() and info.linkname == "bin/busybox"
    assert "bin/linuxrc" in layer
    assert layer["tmp"][0].mode == 0o1777
    assert layer["root"][0].mode == 0o700
    assert b"nobody:x:65534" in layer["etc/passwd"][1]
    assert all(info.mtime == 0 and info.uid == 0 for info, _ in layer.values())


def test_image_tarball_is_consistent() -> None:
    image = build_container_image(b"BUSYBOX", APPLETS, "1:1.35.0-4", 0)
    files = members(image.tarball)
    blobs = {name: data for name, (_, data) in files.items() if name.startswith("blobs/sha256/")}
    for name, data in blobs.items():
        assert digest(data) == "sha256:" + name.rsplit("/", 1)[1]

    assert json.loads(files["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"][1])
    (entry,) = index["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/library/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    manifest_bytes = blobs["blobs/sha256/" + entry["digest"].split(":")[1]]
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config_bytes = blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]]
    assert manifest["config"]["size"] == len(config_bytes)
    (layer_ref,) = manifest["layers"]
    layer = blobs["blobs/sha256/" + layer_ref["digest"].split(":")[1]]
    assert layer_ref["mediaType"] == "application/vnd.oci.image.layer.v1.tar"

    config = json.loads(config_bytes)
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"][0].startswith("PATH=")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [digest(layer)]}
    assert image.image_id == manifest["config"]["digest"]

    (legacy,) = json.loads(files["manifest.json"][1])
    assert legacy["RepoTags"] == ["busybox:latest"]
    assert legacy["Config"] == "blobs/sha256/" + image.image_id.split(":")[1]
    assert legacy["Layers"] == ["blobs/sha256/" + digest(layer).split(":")[1]]
    assert "busybox" in json.loads(files["repositories"][1])


def test_image_bytes_are_deterministic() -> None:
    first = build_container_image(b"BUSYBOX", APPLETS, "1", 0).tarball
    assert first == build_container_image(b"BUSYBOX", list(reversed(APPLETS)), "1", 0).tarball


def test_applet_links_never_shadow_package_commands() -> None:
    tree = Tree.merged_usr()
    tree.add("usr/bin/busybox", File(b"bb", 0o755))
    tree.add("usr/bin/ip", File(b"iproute2", 0o755))  # iproute2 has /bin/ip
    linked = add_applet_links(tree, APPLETS)
    assert tree.get("usr/bin/ip") == File(b"iproute2", 0o755)
    assert "usr/sbin/ip" not in tree  # busybox's sbin/ip would shadow it on PATH
    assert tree.get("usr/bin/sh") == Symlink("busybox")
    assert tree.get("usr/sbin/nologin") == Symlink("../bin/busybox")
    assert "linuxrc" not in tree
    # not where the kernel looks by default (/sbin/modprobe): the boot sets kernel.modprobe
    assert tree.get("usr/bin/modprobe") == Symlink("busybox")
    assert tree.resolve("sbin/modprobe", follow_last=False) is None
    assert sorted(linked) == [
        "usr/bin/awk", "usr/bin/ls", "usr/bin/modprobe", "usr/bin/sh", "usr/sbin/nologin"
    ]  # fmt: skip

"""busybox applets: links in the guest root, and the preloaded `busybox` container image."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import posixpath
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.errors import ImageBuildError
from images.tree import Symlink, Tree

BUSYBOX = "usr/bin/busybox"  # /bin/busybox in the package; /bin is a symlink to usr/bin
COMMAND_DIRS = ("usr/bin", "usr/sbin")
# Applets linked somewhere else than busybox says. The kernel runs /sbin/modprobe for
# its module requests, the first of them (crypto self-tests, IPv6's segment routing)
# before /init runs, each for an algorithm no module provides: with no /sbin/modprobe
# each fails at once, where starting busybox costs 20-200 ms of the boot under tcg. The
# boot points kernel.modprobe at /usr/lib/vmctl/modprobe (which runs it) once /proc is up.
RELOCATED = {"modprobe": "usr/bin"}


def applet_paths(busybox: bytes, scratch: Path) -> list[str]:
    """Ask the (static) binary itself which applets it has and where they belong."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, prefix="busybox-", delete=False) as handle:
        handle.write(busybox)
        exe = Path(handle.name)
    try:
        os.chmod(exe, 0o755)
        result = subprocess.run([str(exe), "--list-full"], capture_output=True, text=True)
    except OSError as exc:
        raise ImageBuildError(
            f"cannot run the guest's busybox on this host: {exc}",
            "the image builder needs an x86-64 Linux host",
        ) from exc
    finally:
        exe.unlink(missing_ok=True)
    if result.returncode != 0:
        raise ImageBuildError(f"busybox --list-full failed: {result.stderr.strip()}")
    return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())


def add_applet_links(tree: Tree, applets: list[str]) -> list[str]:
    """Symlink each applet to busybox, unless a package already has that command.

    A package's tool (iproute2's ip, e2fsprogs' mke2fs) is the real one; a busybox link
    in the other bin directory would shadow it depending on PATH order, so the name is
    skipped everywhere. Returns the paths linked.
    """
    linked = []
    for applet in applets:
        directory, name = posixpath.split(applet)
        if name == "busybox" or not directory:
            continue  # no /linuxrc: the kernel runs /init, never linuxrc
        if any(tree.resolve(f"{d}/{name}", follow_last=False) for d in COMMAND_DIRS):
            continue
        directory = RELOCATED.get(name, directory)
        path = tree.resolve(directory) or directory
        link = f"{path}/{name}"
        if link in tree:
            continue
        target = posixpath.relpath(BUSYBOX, path)
        linked.append(tree.add(link, Symlink(target), "busybox-static"))
    return linked


# --- the container image --------------------------------------------------------------

IMAGE_NAME = "busybox"
IMAGE_TAG = "latest"
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Accounts the usual busybox image carries, so `-u nobody` and `ls -l` names work.
_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "sys:x:3:3:sys:/dev:/bin/false\n"
    "mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
_GROUP = (
    "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\n"
    "wheel:x:10:root\nmail:x:12:\nwww-data:x:33:\nusers:x:100:\nnogroup:x:65534:\n"
)
_DIRS = {  # path -> mode
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "home": 0o755,
    "root": 0o700,
    "tmp": 0o1777,
    "usr": 0o755,
    "usr/sbin": 0o755,
    "var": 0o755,
    "var/spool": 0o755,
    "var/spool/mail": 0o755,
    "var/www": 0o755,
}


@dataclass(frozen=True)
class ContainerImage:
    tarball: bytes  # `docker save` format that is also an OCI image layout
    image_id: str  # "sha256:<config digest>", what `docker images --no-trunc` shows
    layer_digest: str


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(
    name: str, kind: bytes, mode: int, mtime: int, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, mtime, size, link
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_layer(busybox: bytes, applets: list[str], mtime: int) -> bytes:
    """The root filesystem tar: /bin/busybox plus one hard link per applet in /bin."""
    names = sorted({posixpath.basename(a) for a in applets} - {"busybox"})
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    files = {
        "bin/busybox": (busybox, 0o755),
        "etc/passwd": (_PASSWD.encode(), 0o644),
        "etc/group": (_GROUP.encode(), 0o644),
    }
    # Hard links come after the file they link to: an extractor creates them from it.
    all_paths = sorted([*_DIRS, *files], key=lambda p: p.split("/"))
    all_paths += [f"bin/{n}" for n in names]
    for path in all_paths:
        if path in _DIRS:
            entries.append((_info(path + "/", tarfile.DIRTYPE, _DIRS[path], mtime), None))
        elif path in files:
            data, mode = files[path]
            entries.append((_info(path, tarfile.REGTYPE, mode, mtime, len(data)), data))
        else:
            # Hard links, as the upstream image has: one inode, and `ls -i` agrees.
            entries.append((_info(path, tarfile.LNKTYPE, 0o755, mtime, link="bin/busybox"), None))
    return _tar(entries)


def _iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build_container_image(
    busybox: bytes, applets: list[str], version: str, mtime: int
) -> ContainerImage:
    layer = build_layer(busybox, applets, mtime)
    layer_digest = _sha(layer)
    created = _iso(mtime)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": [_PATH], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [
                {"created": created, "created_by": f"vmctl image builder: busybox-static {version}"}
            ],
        }
    )
    config_digest = _sha(config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    )
    manifest_digest = _sha(manifest)
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": f"docker.io/library/{IMAGE_NAME}:{IMAGE_TAG}",
                        "org.opencontainers.image.ref.name": IMAGE_TAG,
                    },
                }
            ],
        }
    )

    def blob(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    legacy = _json(
        [
            {
                "Config": blob(config_digest),
                "RepoTags": [f"{IMAGE_NAME}:{IMAGE_TAG}"],
                "Layers": [blob(layer_digest)],
            }
        ]
    )
    repositories = _json({IMAGE_NAME: {IMAGE_TAG: layer_digest.split(":", 1)[1]}})
    files = {
        blob(config_digest): config,
        blob(layer_digest): layer,
        blob(manifest_digest): manifest,
        "index.json": index,
        "manifest.json": legacy,
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "repositories": repositories,
    }
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("blobs/", tarfile.DIRTYPE, 0o755, mtime), None),
        (_info("blobs/sha256/", tarfile.DIRTYPE, 0o755, mtime), None),
    ]
    for name in sorted(files):
        data = files[name]
        entries.append((_info(name, tarfile.REGTYPE, 0o644, mtime, len(data)), data))
    return ContainerImage(_tar(entries), config_digest, layer_digest)

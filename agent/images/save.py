"""`docker save`: images as one tar that `docker load` (ours or dockerd's) reads back.

The tar is what docker 25 and later write: an OCI image layout (``oci-layout``,
``index.json``, content-addressed ``blobs/sha256/…``: layer tars, configs, OCI manifests)
that also carries docker's ``manifest.json`` and legacy ``repositories``. Layers are
uncompressed, byte for byte the tars they were loaded from (rebuilt from the store's tar
records, see :mod:`agent.images.tarsplit`), so their digests are the configs' DiffIDs.

Everything is decided before the first byte goes out (which images, which tags, every
size), so a bad name is an error status, not a broken tar; the tar itself is then written
piece by piece into any object with ``write``, never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.images.reference import InvalidReference, Reference, familiar, is_full_id, parse
from agent.images.store import Image, ImageNotFound, ImageStore
from agent.images.tarsplit import LayerTarReader

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
BLOCK = 512
_COPY_CHUNK = 1 << 20


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


def _json(value: object) -> bytes:
    """Compact JSON, as Go's encoder writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


@dataclass
class SavedImage:
    image: Image
    tags: list[Reference] = field(default_factory=list)


def select(store: ImageStore, names: Iterable[str]) -> list[SavedImage]:
    """The images ``names`` stand for, as dockerd reads them: ``repo:tag`` (or a digest)
    that one image with that tag; a bare repository name every tag of it; an id (or
    unique prefix) the image, untagged."""
    chosen: dict[str, SavedImage] = {}

    def add(image_id: str, tag: Reference | None) -> None:
        saved = chosen.get(image_id)
        if saved is None:
            saved = chosen[image_id] = SavedImage(store.get(image_id))
        if tag is not None and tag not in saved.tags:
            saved.tags.append(tag)

    tags = store.tags()
    for name in names:
        if not name:
            raise InvalidReference("invalid reference format: an empty image name")
        if is_full_id(name):
            add(store.resolve(name), None)
            continue
        try:
            ref = parse(name, default_tag=None)
        except InvalidReference:
            add(store.resolve(name), None)  # a short id, or a 404 naming it
            continue
        if ref.digest:
            add(store.resolve(name), None)
        elif ref.tag:
            add(store.resolve(name), ref)
        else:
            found = sorted(t for t in tags if parse(t).name == ref.name)
            if not found:
                add(store.resolve(name), None)  # a short id, or "No such image"
            for text in found:
                add(tags[text], parse(text))
    if not chosen:
        raise ImageNotFound("no image names given")
    return list(chosen.values())


@dataclass
class _Entry:
    name: str
    size: int
    data: bytes | None = None  # small files
    layer: tuple[ImageStore, str, str] | None = None  # (store, chain id, diff id)


class SavePlan:
    """Every member of the archive, with its size, worked out before writing starts."""

    def __init__(self, store: ImageStore, images: list[SavedImage]) -> None:
        self.entries: dict[str, _Entry] = {}
        manifest: list[dict[str, Any]] = []
        descriptors: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        for saved in images:
            image = saved.image
            config = store.config_bytes(image.id)
            self._add(_Entry(_blob(image.id), len(config), data=config))
            layers = []
            for diff_id, chain in zip(image.diff_ids, image.chain_ids, strict=True):
                size = store.layer_tar_size(chain)
                self._add(_Entry(_blob(diff_id), size, layer=(store, chain, diff_id)))
                layers.append({"mediaType": LAYER_TYPE, "digest": diff_id, "size": size})
            oci_manifest = _json(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": image.id, "size": len(config)},
                    "layers": layers,
                }
            )
            manifest_digest = _digest(oci_manifest)
            self._add(_Entry(_blob(manifest_digest), len(oci_manifest), data=oci_manifest))
            descriptor = {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(oci_manifest),
                "platform": _platform(image.config),
            }
            for tag in saved.tags:
                annotations = {NAME_ANNOTATION: str(tag), REF_ANNOTATION: tag.tag}
                descriptors.append({**descriptor, "annotations": annotations})
                if image.diff_ids:
                    top = image.diff_ids[-1].removeprefix("sha256:")
                    repositories.setdefault(tag.familiar_name, {})[tag.tag] = top
            if not saved.tags:
                descriptors.append(descriptor)
            manifest.append(
                {
                    "Config": _blob(image.id),
                    "RepoTags": [familiar(t) for t in saved.tags] or None,
                    "Layers": [_blob(d) for d in image.diff_ids],
                }
            )
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": descriptors}
        files = {
            "index.json": _json(index),
            "manifest.json": _json(manifest) + b"\n",
            "oci-layout": _json(OCI_LAYOUT),
        }
        if repositories:
            files["repositories"] = _json(repositories) + b"\n"
        for name, data in files.items():
            self._add(_Entry(name, len(data), data=data))

    def _add(self, entry: _Entry) -> None:
        self.entries.setdefault(entry.name, entry)  # a shared layer is written once

    def members(self) -> list[_Entry]:
        """Blobs first (sorted by digest), then the layout's files, as docker orders them."""
        blobs = sorted(e for e in self.entries if e.startswith("blobs/"))
        rest = sorted(e for e in self.entries if not e.startswith("blobs/"))
        return [self.entries[name] for name in blobs + rest]

    def write(self, out: Writer) -> None:
        for directory in ("blobs/", "blobs/sha256/"):
            out.write(_header(directory, 0, directory=True))
        for entry in self.members():
            out.write(_header(entry.name, entry.size))
            if entry.data is not None:
                out.write(entry.data)
            else:
                assert entry.layer is not None
                store, chain, diff_id = entry.layer
                reader = LayerTarReader(store.layer_dir(chain), diff_id, entry.size)
                try:
                    while chunk := reader.read(_COPY_CHUNK):
                        out.write(chunk)
                finally:
                    reader.close()
            padding = _padded(entry.size) - entry.size
            if padding:
                out.write(b"\0" * padding)
        out.write(b"\0" * (2 * BLOCK))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _platform(config: dict[str, Any]) -> dict[str, str]:
    platform = {
        "architecture": str(config.get("architecture") or "amd64"),
        "os": str(config.get("os") or "linux"),
    }
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # the same images save to the same bytes
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

"""Load `docker save` tarballs (and plain OCI image layouts) into the image store.

Two layouts exist, and docker since v25 writes both into one tar:

- docker's ``manifest.json``: ``[{"Config": path, "RepoTags": [...], "Layers": [paths]}]``,
  layers being ``<id>/layer.tar`` (older docker; duplicates are symlinks to another
  ``layer.tar``) or ``blobs/sha256/<hex>``;
- the OCI image layout: ``index.json`` lists manifests (or nested indexes, one per platform)
  whose config and layers are content-addressed blobs; tags come from the annotations
  ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name``.

``manifest.json`` wins when both are present, as in dockerd. Every layer is checked against
the config's DiffIDs, every OCI blob against its digest. Images are stored untagged first and
tagged only when all of them loaded, so a bad archive leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from agent.errors import BadRequest
from agent.images.layers import LayerError
from agent.images.reference import InvalidReference, Reference, familiar, parse
from agent.images.store import ImageStore, LayerOpener

MANIFEST = "manifest.json"
INDEX = "index.json"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_MAX_JSON = 64 << 20  # manifests and configs are small; refuse to buffer a huge "JSON"
_MAX_LINK_HOPS = 16
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class ArchiveError(BadRequest):
    """An archive that is not a loadable image tarball."""


@dataclass
class LoadedImage:
    image_id: str
    tags: list[str] = field(default_factory=list)  # familiar, e.g. "busybox:latest"

    def messages(self) -> list[str]:
        """What `docker load` prints for this image."""
        if self.tags:
            return [f"Loaded image: {tag}" for tag in self.tags]
        return [f"Loaded image ID: {self.image_id}"]


@dataclass
class _Entry:
    """One image of the archive, ready to hand to the store."""

    config: bytes
    open_layer: LayerOpener
    layer_count: int
    tags: list[Reference]
    source: str  # for messages: where in the archive it was described


class _Members:
    """Archive members by normalized name, with in-archive links resolved."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.by_name = {_norm(m.name): m for m in tar.getmembers()}

    def __contains__(self, name: str) -> bool:
        return _norm(name) in self.by_name

    def _resolve(self, name: str, listed_in: str) -> tarfile.TarInfo:
        path = _norm(name)
        for _ in range(_MAX_LINK_HOPS):
            info = self.by_name.get(path)
            if info is None:
                raise ArchiveError(f"the archive lacks {name!r}, which {listed_in} lists")
            if info.issym():
                path = _norm(posixpath.join(posixpath.dirname(path), info.linkname))
            elif info.islnk():
                path = _norm(info.linkname)
            elif info.isreg():
                return info
            else:
                raise ArchiveError(f"{name!r} in the archive is not a file")
        raise ArchiveError(f"{name!r} in the archive is a loop of links")

    def open(self, name: str, listed_in: str) -> BinaryIO:
        handle = self.tar.extractfile(self._resolve(name, listed_in))
        assert handle is not None  # _resolve returns regular files only
        return cast(BinaryIO, handle)

    def read(self, name: str, listed_in: str) -> bytes:
        info = self._resolve(name, listed_in)
        if info.size > _MAX_JSON:
            raise ArchiveError(f"{name!r} in the archive is too large ({info.size} bytes)")
        with self.open(name, listed_in) as handle:
            return handle.read()


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class _Verifying:
    """Passes a blob through and, at its end, checks it against its digest."""

    def __init__(self, stream: BinaryIO, digest: str) -> None:
        self._stream = stream
        self._digest = digest
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        if not data and size != 0:
            actual = "sha256:" + self._hash.hexdigest()
            if actual != self._digest:
                raise LayerError(
                    f"blob {self._digest} in the archive is corrupt: its content hashes to {actual}"
                )
        return data

    def close(self) -> None:
        self._stream.close()


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{what} in the archive is not valid JSON: {exc}") from None


def _tags(names: list[str], where: str) -> list[Reference]:
    tags = []
    for name in names:
        try:
            tags.append(parse(name))
        except InvalidReference as exc:
            raise ArchiveError(f"{where} has an invalid tag {name!r}: {exc.message}") from None
    return tags


def _diff_id_count(config: bytes, where: str) -> int:
    parsed = _json(config, f"the config of {where}")
    rootfs = parsed.get("rootfs") if isinstance(parsed, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return len(diff_ids) if isinstance(diff_ids, list) else 0


# --- docker's manifest.json -----------------------------------------------------------


def _legacy_entries(members: _Members) -> list[_Entry]:
    manifest = _json(members.read(MANIFEST, "the archive"), MANIFEST)
    if not isinstance(manifest, list):
        raise ArchiveError(f"{MANIFEST} in the archive is not a list of images")
    entries = []
    for number, item in enumerate(manifest, 1):
        where = f"image {number} of {MANIFEST}"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise ArchiveError(f"{where} has no Config")
        layers = item.get("Layers") or []
        repo_tags = item.get("RepoTags") or []
        if not all(isinstance(x, str) for x in [*layers, *repo_tags]):
            raise ArchiveError(f"{where} has malformed Layers or RepoTags")
        config = members.read(item["Config"], MANIFEST)
        if _diff_id_count(config, where) != len(layers):
            raise ArchiveError(
                f"{where} lists {len(layers)} layers but its config has "
                f"{_diff_id_count(config, where)} diff_ids"
            )

        def opener(index: int, layers: list[str] = layers) -> BinaryIO:
            return members.open(layers[index], MANIFEST)

        entries.append(_Entry(config, opener, len(layers), _tags(repo_tags, where), where))
    return entries


# --- the OCI image layout -------------------------------------------------------------


def _blob_path(descriptor: dict[str, Any], where: str) -> tuple[str, str]:
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        raise ArchiveError(f"{where} has a descriptor without a digest")
    algorithm, hex_ = digest.split(":", 1)
    if algorithm != "sha256":
        raise ArchiveError(f"{where}: digest algorithm {algorithm!r} is not supported")
    return digest, f"blobs/sha256/{hex_}"


def _read_blob(members: _Members, descriptor: dict[str, Any], where: str) -> bytes:
    digest, path = _blob_path(descriptor, where)
    data = members.read(path, where)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ArchiveError(
            f"blob {digest} in the archive is corrupt: its content hashes to {actual}"
        )
    return data


def _platform_matches(descriptor: dict[str, Any]) -> bool:
    wanted = _ARCH.get(platform.machine(), platform.machine())
    plat = descriptor.get("platform")
    return (
        isinstance(plat, dict) and plat.get("os") == "linux" and plat.get("architecture") == wanted
    )


def _manifests(members: _Members, descriptor: dict[str, Any], where: str) -> dict[str, Any]:
    """The image manifest ``descriptor`` leads to, through nested indexes for this platform."""
    for _ in range(_MAX_LINK_HOPS):
        document = _json(_read_blob(members, descriptor, where), where)
        if not isinstance(document, dict):
            raise ArchiveError(f"{where} is not a JSON object")
        media_type = document.get("mediaType", descriptor.get("mediaType"))
        if media_type in _MANIFEST_TYPES or (media_type is None and "config" in document):
            return document
        if media_type not in _INDEX_TYPES and "manifests" not in document:
            raise ArchiveError(f"{where} has unsupported media type {media_type!r}")
        candidates = [d for d in document.get("manifests") or [] if isinstance(d, dict)]
        chosen = [d for d in candidates if _platform_matches(d)]
        if not chosen:
            chosen = [d for d in candidates if "platform" not in d]
        if not chosen:
            raise ArchiveError(f"{where} has no image for linux/{platform.machine()}")
        descriptor = chosen[0]
    raise ArchiveError(f"{where} nests indexes too deeply")


def _oci_tags(annotations: Any, where: str) -> list[Reference]:
    if not isinstance(annotations, dict):
        return []
    name = annotations.get(NAME_ANNOTATION)
    if not isinstance(name, str):
        ref = annotations.get(REF_ANNOTATION)
        # The spec allows a bare tag ("latest") here, which names no repository.
        name = ref if isinstance(ref, str) and any(c in ref for c in ":/@") else None
    if name is None:
        return []
    return _tags([name], where)


def _oci_entries(members: _Members) -> list[_Entry]:
    index = _json(members.read(INDEX, "the archive"), INDEX)
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError(f"{INDEX} in the archive has no manifests list")
    entries = []
    for number, descriptor in enumerate(index["manifests"], 1):
        where = f"manifest {number} of {INDEX}"
        if not isinstance(descriptor, dict):
            raise ArchiveError(f"{where} is not a descriptor")
        manifest = _manifests(members, descriptor, where)
        config_descriptor = manifest.get("config")
        layers = manifest.get("layers") or []
        if not isinstance(config_descriptor, dict) or not isinstance(layers, list):
            raise ArchiveError(f"{where} has no config or layers")
        config = _read_blob(members, config_descriptor, where)
        if _diff_id_count(config, where) != len(layers):
            raise ArchiveError(
                f"{where} lists {len(layers)} layers but its config has "
                f"{_diff_id_count(config, where)} diff_ids"
            )
        blobs = [_blob_path(layer, where) for layer in layers]

        def opener(
            index: int, blobs: list[tuple[str, str]] = blobs, where: str = where
        ) -> BinaryIO:
            digest, path = blobs[index]
            return cast(BinaryIO, _Verifying(members.open(path, where), digest))

        tags = _oci_tags(descriptor.get("annotations"), where)
        entries.append(_Entry(config, opener, len(layers), tags, where))
    return entries


# --- the archive itself ---------------------------------------------------------------


@contextlib.contextmanager
def _open_tar(store: ImageStore, source: BinaryIO | Path) -> Iterator[tarfile.TarFile]:
    """A random-access TarFile; a stream that cannot seek is spooled under the store's tmp/."""
    try:
        if isinstance(source, Path):
            with tarfile.open(source, "r:*") as tar:
                yield tar
            return
        seekable = getattr(source, "seekable", None)
        if seekable is not None and seekable():
            with tarfile.open(fileobj=source, mode="r:*") as tar:
                yield tar
            return
        with tempfile.TemporaryFile(dir=store.tmp_dir, prefix="load-") as spool:
            shutil.copyfileobj(source, spool, 1 << 20)
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r:*") as tar:
                yield tar
    except tarfile.TarError as exc:
        if "could not be opened successfully" in str(exc):  # r:* tried every format
            raise ArchiveError(
                "not a valid image archive: it is not a tar file (nor a gzip, bzip2 or xz "
                "compressed one)"
            ) from None
        raise ArchiveError(f"not a valid image archive (tar): {exc}") from None


def load_archive(store: ImageStore, source: BinaryIO | Path) -> list[LoadedImage]:
    """Load every image of a `docker save` or OCI-layout tarball; tag them as it says."""
    with _open_tar(store, source) as tar:
        members = _Members(tar)
        if MANIFEST in members:
            entries = _legacy_entries(members)
        elif INDEX in members:
            entries = _oci_entries(members)
        else:
            raise ArchiveError(
                f"not an image archive: it has neither {MANIFEST} (docker save) nor {INDEX} "
                "(OCI image layout)"
            )
        before = {image.id for image in store.list()}
        stored: list[str] = []
        try:
            for entry in entries:
                stored.append(store.load_layers_and_config(entry.config, entry.open_layer).id)
        except BaseException:
            for image_id in stored:
                if image_id not in before:
                    store.delete(image_id, force=True)
            raise
    loaded: dict[str, LoadedImage] = {}
    for entry, image_id in zip(entries, stored, strict=True):
        result = loaded.setdefault(image_id, LoadedImage(image_id))
        for tag in entry.tags:
            store.tag(image_id, tag)
            result.tags.append(familiar(tag))
    return list(loaded.values())

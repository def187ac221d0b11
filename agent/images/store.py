"""The agent's local image store: layers unpacked for overlayfs, configs, and tags.

Layout under ``root``::

    layers/<chain id hex>/diff/        the layer's files, whiteouts as overlay markers
    layers/<chain id hex>/meta.json    {"diff_id", "chain_id", "parent", "size", "tar_size"}
    layers/<chain id hex>/tar-split.gz the layer tar's headers, to write it back (tarsplit)
    configs/<image id hex>.json        the image config, byte for byte (id = its sha256)
    repositories.json                  {"tags": {"docker.io/library/busybox:latest": id},
                                        "digests": {...}}
    tmp/                               staging; emptied when the store opens

Layers are keyed by ChainID (OCI: chain(L1) = diff_id(L1), chain(Ln) = sha256(chain(Ln-1) +
" " + diff_id(Ln))), so one directory is one layer on top of one exact parent stack and two
images with the same base share its directories. A layer is extracted under tmp/ and renamed
into layers/ only when complete, and an image's config is written after all its layers are in
place; a crash therefore leaves at most layers no image refers to, which opening the store
removes. Metadata files are replaced atomically (write a temp file, then os.replace).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.images import tarsplit
from agent.images.layers import LayerError, LayerInfo, extract_layer
from agent.images.reference import InvalidReference, Reference, familiar, parse

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")
MIN_SHORT_ID = 4

# Opens layer number i (0-based, lowest first) of the image being loaded.
LayerOpener = Callable[[int], BinaryIO]
# Says what uses an image (e.g. "stopped container 1a2b3c"), or None when nothing does.
InUseCheck = Callable[[str], str | None]
# What `docker rmi` reports: [{"Untagged": "busybox:latest"}, {"Deleted": "sha256:…"}, …]
DeleteRecords = list[dict[str, str]]


class ImageNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        super().__init__(f"No such image: {ref}")


class ImageInUse(Conflict):
    """Deleting the image would pull the layers from under a container."""


class InvalidImage(BadRequest):
    """An image config the store cannot use."""


@dataclass
class Image:
    id: str  # "sha256:<hex of the config>"
    config: dict[str, Any]
    repo_tags: list[str]  # familiar form, e.g. "busybox:latest"
    layer_dirs: list[Path]  # diff dirs, lowest first (overlay wants them reversed)
    created: str  # the config's RFC 3339 "created", "" when absent
    size: int  # sum of the layers' sizes
    diff_ids: list[str]
    chain_ids: list[str]
    repo_digests: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The OCI ChainIDs of a stack of layers given their DiffIDs, lowest first."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _diff_ids(config: dict[str, Any]) -> list[str]:
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidImage('image config has no rootfs of type "layers"')
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST_RE.fullmatch(d) for d in diff_ids
    ):
        raise InvalidImage("image config rootfs.diff_ids must be a list of sha256 digests")
    return list(diff_ids)


class ImageStore:
    def __init__(self, root: Path, in_use: InUseCheck | None = None) -> None:
        self.root = root
        self.layers_dir = root / "layers"
        self.configs_dir = root / "configs"
        self.tmp_dir = root / "tmp"
        self.repositories_file = root / "repositories.json"
        self.in_use = in_use
        self._lock = threading.Lock()
        for directory in (self.layers_dir, self.configs_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._tags: dict[str, str] = {}
        self._digests: dict[str, str] = {}
        self._read_repositories()
        self._clean_up()

    # --- persistence ------------------------------------------------------------------

    def _read_repositories(self) -> None:
        try:
            data = json.loads(self.repositories_file.read_bytes())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise InvalidImage(f"{self.repositories_file} is corrupt: {exc}") from None
        self._tags = dict(data.get("tags", {}))
        self._digests = dict(data.get("digests", {}))

    def _write_repositories(self) -> None:
        data = {"tags": self._tags, "digests": self._digests}
        _atomic_write(self.repositories_file, json.dumps(data, indent=1, sort_keys=True).encode())

    def _clean_up(self) -> None:
        """Drop staging leftovers and layers no image refers to (a crash mid-load)."""
        for entry in self.tmp_dir.iterdir():
            _remove(entry)
        try:
            used = {c for image_id in self._image_ids() for c in self._chains_of(image_id)}
        except (OSError, ValueError, InvalidImage) as exc:
            log.warning("not collecting unused layers: %s", exc)
            return
        for layer in self.layers_dir.iterdir():
            if "sha256:" + layer.name not in used:
                log.info("removing unreferenced layer %s", layer.name)
                self._discard(layer)

    def _discard(self, path: Path) -> None:
        """Remove a directory: renamed away first, so it vanishes from its place at once."""
        doomed = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="rm-"))
        os.rename(path, doomed / "x")
        _remove(doomed)

    def _image_ids(self) -> list[str]:
        return [
            "sha256:" + p.stem
            for p in self.configs_dir.glob("*.json")
            if _DIGEST_RE.fullmatch("sha256:" + p.stem)
        ]

    def _config(self, image_id: str) -> dict[str, Any]:
        data = json.loads((self.configs_dir / f"{_hex(image_id)}.json").read_bytes())
        if not isinstance(data, dict):
            raise InvalidImage(f"image config {image_id} is not a JSON object")
        return data

    def _chains_of(self, image_id: str) -> list[str]:
        return chain_ids(_diff_ids(self._config(image_id)))

    def layer_dir(self, chain: str) -> Path:
        """The directory of one stored layer (``diff/``, ``meta.json``, its tar record)."""
        return self.layers_dir / _hex(chain)

    def layer_meta(self, chain: str) -> dict[str, Any]:
        try:
            data = json.loads((self.layer_dir(chain) / "meta.json").read_bytes())
        except FileNotFoundError:
            raise ImageNotFound(f"layer {chain}") from None
        return data if isinstance(data, dict) else {}

    def layer_tar_size(self, chain: str) -> int:
        """Bytes of the layer's tar as loaded (what `docker save` writes for it)."""
        size = self.layer_meta(chain).get("tar_size")
        return size if isinstance(size, int) else tarsplit.tar_size(self.layer_dir(chain))

    def tags(self) -> dict[str, str]:
        """Every tag (normalized, e.g. "docker.io/library/busybox:latest") and its image id."""
        with self._lock:
            return dict(self._tags)

    def config_bytes(self, image_id: str) -> bytes:
        """The config exactly as loaded (what `docker save` must write back)."""
        return (self.configs_dir / f"{_hex(image_id)}.json").read_bytes()

    # --- loading ----------------------------------------------------------------------

    def load_layers_and_config(
        self, config_bytes: bytes, open_layer: LayerOpener, parallel: int = 1
    ) -> Image:
        """Store an image: extract the layers it lacks, check their DiffIDs, save the config.

        ``open_layer(i)`` is called only for layers not already present; the store reads the
        stream to its end and closes it. With ``parallel`` > 1 that many layers are
        extracted at once (each goes to its own directory; hashing, inflating and writing
        release the GIL), for openers whose streams are independent (a pull's downloads,
        not one `docker load` archive). On any error nothing new is stored.
        """
        try:
            config = json.loads(config_bytes)
        except ValueError as exc:
            raise InvalidImage(f"image config is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise InvalidImage("image config is not a JSON object")
        diff_ids = _diff_ids(config)
        chains = chain_ids(diff_ids)
        image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        staged: dict[str, Path] = {}  # chain id -> its extracted layer under tmp/
        try:
            # Layers found present are checked again under the lock: a concurrent delete
            # may have removed one meanwhile, and then it is extracted after all. A layer
            # stored without a tar record (an older agent) is extracted again for its record.
            for _ in range(3):
                missing = [
                    (index, diff_id, chain, chains[index - 1] if index else "")
                    for index, (diff_id, chain) in enumerate(zip(diff_ids, chains, strict=True))
                    if chain not in staged and not self._has_complete_layer(chain)
                ]
                self._stage_layers(open_layer, missing, staged, parallel)
                with self._lock:
                    if all(c in staged or self._has_layer(c) for c in chains):
                        self._commit(staged)
                        _atomic_write(self.configs_dir / f"{_hex(image_id)}.json", config_bytes)
                        break
            else:
                raise AgentError(500, "layers kept vanishing while the image was stored; retry")
        finally:
            for stage in staged.values():
                if stage.exists():
                    _remove(stage)
        return self._image(image_id)

    def _stage_layers(
        self,
        open_layer: LayerOpener,
        missing: list[tuple[int, str, str, str]],
        staged: dict[str, Path],
        parallel: int,
    ) -> None:
        """Extract ``missing`` (index, diff id, chain, parent) into ``staged``; the first
        failure in layer order is raised once every extraction has ended."""
        if parallel <= 1 or len(missing) <= 1:
            for index, diff_id, chain, parent in missing:
                staged[chain] = self._stage_layer(open_layer, index, diff_id, chain, parent)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parallel, thread_name_prefix="extract") as pool:
            futures = [
                (chain, pool.submit(self._stage_layer, open_layer, index, diff_id, chain, parent))
                for index, diff_id, chain, parent in missing
            ]
            failures: list[BaseException] = []
            for chain, future in futures:
                try:
                    staged[chain] = future.result()
                except BaseException as error:  # each stage removed itself on failure
                    failures.append(error)
        if failures:
            raise failures[0]

    def has_layer_chain(self, chain: str) -> bool:
        """Whether a layer stack is stored whole (a pull need not fetch it)."""
        return self._has_complete_layer(chain)

    def has_image(self, image_id: str) -> bool:
        return (self.configs_dir / f"{_hex(image_id)}.json").exists()

    def _has_layer(self, chain: str) -> bool:
        return (self.layers_dir / _hex(chain) / "meta.json").exists()

    def _has_complete_layer(self, chain: str) -> bool:
        return self._has_layer(chain) and tarsplit.has_record(self.layers_dir / _hex(chain))

    def _commit(self, staged: dict[str, Path]) -> None:
        """Rename extracted layers into place. Caller holds the lock."""
        for chain, stage in staged.items():
            target = self.layers_dir / _hex(chain)
            if self._has_layer(chain):
                # A concurrent load stored the same layer first, or it lacked its tar record:
                # the same DiffID means the same tar, so the staged record fits its files.
                if not tarsplit.has_record(target):
                    self._adopt_record(stage, target)
                continue
            if target.exists():
                self._discard(target)  # not complete, so not ours: layers appear whole
            os.rename(stage, target)

    def _adopt_record(self, stage: Path, target: Path) -> None:
        rescued = stage / tarsplit.RESCUED
        if rescued.exists():
            os.rename(rescued, target / tarsplit.RESCUED)
        meta_file = target / "meta.json"
        meta = json.loads(meta_file.read_bytes())
        meta["tar_size"] = json.loads((stage / "meta.json").read_bytes())["tar_size"]
        os.rename(stage / tarsplit.RECORD, target / tarsplit.RECORD)
        _atomic_write(meta_file, json.dumps(meta, sort_keys=True).encode())

    def _extract_to_stage(self, stream: BinaryIO) -> tuple[Path, LayerInfo, int]:
        """Extract one layer under tmp/, recording its tar: (stage, info, tar size)."""
        stage = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="layer-"))
        recorder = tarsplit.SplitRecorder(stage)
        try:
            info = extract_layer(stream, stage / "diff", split=recorder)
            return stage, info, recorder.finish()
        except BaseException:
            recorder.close()
            _remove(stage)
            raise

    @staticmethod
    def _write_meta(stage: Path, info: LayerInfo, chain: str, parent: str, tar_size: int) -> None:
        meta = {
            "diff_id": info.diff_id,
            "chain_id": chain,
            "parent": parent,
            "size": info.size,
            "tar_size": tar_size,
        }
        (stage / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    def _stage_layer(
        self, open_layer: LayerOpener, index: int, diff_id: str, chain: str, parent: str
    ) -> Path:
        stage: Path | None = None
        try:
            stream = open_layer(index)
            try:
                stage, info, tar_size = self._extract_to_stage(stream)
                while stream.read(1 << 20):  # to the end, so a digest check sees it all
                    pass
            finally:
                stream.close()
            if info.diff_id != diff_id:
                raise LayerError(
                    f"layer {index + 1} does not match the image config: its content has "
                    f"DiffID {info.diff_id}, the config expects {diff_id}; the image is "
                    "corrupt or was modified"
                )
            self._write_meta(stage, info, chain, parent, tar_size)
        except LayerError as exc:
            if stage is not None:
                _remove(stage)
            if exc.message.startswith(f"layer {index + 1} "):
                raise
            raise LayerError(f"layer {index + 1} ({diff_id}): {exc.message}") from None
        except BaseException:
            if stage is not None:
                _remove(stage)
            raise
        return stage

    def add_layer_image(
        self, layer: BinaryIO, make_config: Callable[[str], bytes], parent_chain: str = ""
    ) -> Image:
        """Store a new top layer read from ``layer`` (a tar, maybe compressed) and an image.

        ``make_config(diff_id)`` gets the new layer's DiffID once it is extracted and returns
        the config, whose ``rootfs.diff_ids`` must be the parent stack's plus that one. This
        is how `docker import` (and commits) make images; the stream is not closed.
        """
        stage, info, tar_size = self._extract_to_stage(layer)
        try:
            chain = chain_ids([parent_chain, info.diff_id])[1] if parent_chain else info.diff_id
            self._write_meta(stage, info, chain, parent_chain, tar_size)
            config_bytes = make_config(info.diff_id)
            try:
                config = json.loads(config_bytes)
            except ValueError as exc:
                raise InvalidImage(f"image config is not valid JSON: {exc}") from None
            chains = chain_ids(_diff_ids(config if isinstance(config, dict) else {}))
            if not chains or chains[-1] != chain:
                raise InvalidImage("the new image config does not end with the new layer")
            image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
            with self._lock:
                missing = [c for c in chains[:-1] if not self._has_layer(c)]
                if missing:
                    raise ImageNotFound(f"layer {missing[0]} (removed meanwhile)")
                self._commit({chain: stage})
                _atomic_write(self.configs_dir / f"{_hex(image_id)}.json", config_bytes)
        finally:
            if stage.exists():
                _remove(stage)
        return self._image(image_id)

    # --- lookup -----------------------------------------------------------------------

    def _image(self, image_id: str) -> Image:
        config = self._config(image_id)
        diff_ids = _diff_ids(config)
        chains = chain_ids(diff_ids)
        size = 0
        dirs: list[Path] = []
        for chain in chains:
            layer = self.layers_dir / _hex(chain)
            size += int(json.loads((layer / "meta.json").read_bytes()).get("size", 0))
            dirs.append(layer / "diff")
        with self._lock:
            tags = sorted(familiar(name) for name, i in self._tags.items() if i == image_id)
            digests = sorted(familiar(name) for name, i in self._digests.items() if i == image_id)
        created = config.get("created")
        return Image(
            id=image_id,
            config=config,
            repo_tags=tags,
            layer_dirs=dirs,
            created=created if isinstance(created, str) else "",
            size=size,
            diff_ids=diff_ids,
            chain_ids=chains,
            repo_digests=digests,
        )

    def resolve(self, name_or_id: str) -> str:
        """The image id ``name_or_id`` stands for, as docker resolves it."""
        if _DIGEST_RE.fullmatch(name_or_id) or re.fullmatch(r"[0-9a-f]{64}", name_or_id):
            image_id = "sha256:" + _hex(name_or_id)
            if (self.configs_dir / f"{_hex(image_id)}.json").exists():
                return image_id
            raise ImageNotFound(name_or_id)
        try:
            ref = parse(name_or_id)
        except InvalidReference:
            ref = None
        if ref is not None:
            with self._lock:
                found = self._digests.get(str(ref)) if ref.digest else self._tags.get(str(ref))
            if found is not None:
                return found
        match = _HEX_PREFIX_RE.fullmatch(name_or_id)
        if match is not None:
            prefix = match.group(1)
            candidates = [i for i in self._image_ids() if _hex(i).startswith(prefix)]
            if len(candidates) == 1:
                return candidates[0]
        # dockerd names the normalized reference: "No such image: nothere:latest"
        raise ImageNotFound(familiar(ref) if ref is not None else name_or_id)

    def get(self, name_or_id: str) -> Image:
        """An image by name (``:latest`` implied), full or ``sha256:`` id, or unique id prefix."""
        image_id = self.resolve(name_or_id)
        try:
            return self._image(image_id)
        except FileNotFoundError:
            raise ImageNotFound(name_or_id) from None

    def list(self) -> list[Image]:
        """Every image, newest first."""
        images = []
        for image_id in self._image_ids():
            try:
                images.append(self._image(image_id))
            except FileNotFoundError:
                continue  # deleted meanwhile
        images.sort(key=lambda image: (image.created, image.id), reverse=True)
        return images

    # --- tags -------------------------------------------------------------------------

    def tag(self, name_or_id: str, ref: str | Reference) -> Reference:
        """Point ``ref`` (":latest" implied) at an image; moves the tag if it existed."""
        image_id = self.resolve(name_or_id)
        target = parse(ref) if isinstance(ref, str) else ref
        if target.digest:
            raise InvalidReference("refusing to create a tag with a digest reference")
        if not target.tag:
            target = target.with_tag("latest")
        with self._lock:
            self._tags[str(target)] = image_id
            self._write_repositories()
        return target

    def add_digest_reference(self, image_id: str, ref: Reference) -> None:
        """Record ``name@sha256:…`` for an image pulled or pushed (its RepoDigests)."""
        if not ref.digest or ref.tag:
            raise InvalidReference(f"{ref} is not a digest reference")
        with self._lock:
            self._digests[str(ref)] = image_id
            self._write_repositories()

    def untag(self, ref: str | Reference) -> str:
        """Remove one tag (or digest reference); returns the id it pointed at."""
        parsed = parse(ref) if isinstance(ref, str) else ref
        table = "digests" if parsed.digest else "tags"
        with self._lock:
            names = self._digests if parsed.digest else self._tags
            image_id = names.pop(str(parsed), None)
            if image_id is None:
                raise ImageNotFound(str(ref))
            self._write_repositories()
        log.debug("untagged %s from %s", parsed, table)
        return image_id

    # --- deletion ---------------------------------------------------------------------

    def delete(self, name_or_id: str, force: bool = False) -> DeleteRecords:
        """Docker's `rmi`: untag, and delete the image once nothing refers to it.

        By name, only that tag goes; the image goes too if it was its last. By id, every tag
        goes (with force when they span several repositories). An image a container uses is
        refused, or with force only untagged, so the container keeps its layers.
        """
        image_id = self.resolve(name_or_id)
        short = _hex(image_id)[:12]
        by_name = self._names_image(name_or_id, image_id)
        # Asked before taking the lock: the callback may take the container store's.
        user = self.in_use(image_id) if self.in_use else None
        with self._lock:
            tags = sorted(n for n, i in self._tags.items() if i == image_id)
            digests = sorted(n for n, i in self._digests.items() if i == image_id)
            if not (self.configs_dir / f"{_hex(image_id)}.json").exists():
                raise ImageNotFound(name_or_id)  # deleted since it was resolved
            if by_name is not None:
                untag = [by_name]
                repo = _repo(by_name)
                if by_name in tags and not any(_repo(t) == repo for t in tags if t != by_name):
                    # The repository's last tag: its digest references go with it.
                    untag += [d for d in digests if _repo(d) == repo]
                if len(untag) == len(tags) + len(digests) and user is not None and not force:
                    raise ImageInUse(
                        f'conflict: unable to remove repository reference "{familiar(by_name)}" '
                        f"(must force) - image {short} is being used by {user}"
                    )
            else:
                if not force and len({_repo(t) for t in tags}) > 1:
                    raise ImageInUse(
                        f"conflict: unable to delete {short} (must be forced) - image is "
                        "referenced in multiple repositories"
                    )
                if user is not None and not force:
                    raise ImageInUse(
                        f"conflict: unable to delete {short} (must be forced) - image is "
                        f"being used by {user}"
                    )
                untag = tags + digests
            records: DeleteRecords = []
            for name in untag:
                self._tags.pop(name, None)
                self._digests.pop(name, None)
                records.append({"Untagged": familiar(name)})
            if untag:
                self._write_repositories()
            named = any(i == image_id for i in (*self._tags.values(), *self._digests.values()))
            if named or user is not None:
                return records  # an image in use keeps its layers, untagged if forced
            records += self._delete_image(image_id)
        return records

    def _names_image(self, name_or_id: str, image_id: str) -> str | None:
        """The normalized reference when ``name_or_id`` named the image by a tag or digest."""
        try:
            ref = parse(name_or_id)
        except InvalidReference:
            return None
        with self._lock:
            table = self._digests if ref.digest else self._tags
            return str(ref) if table.get(str(ref)) == image_id else None

    def _delete_image(self, image_id: str) -> DeleteRecords:
        """Remove the config and the layers no other image uses. Caller holds the lock."""
        chains = self._chains_of(image_id)
        (self.configs_dir / f"{_hex(image_id)}.json").unlink()
        records = [{"Deleted": image_id}]
        used: set[str] = set()
        for other in self._image_ids():
            try:
                used.update(self._chains_of(other))
            except (OSError, ValueError, InvalidImage):
                return records  # cannot tell what is shared: keep every layer
        for chain in reversed(chains):
            layer = self.layers_dir / _hex(chain)
            if chain in used or not layer.exists():
                continue
            self._discard(layer)
            records.append({"Deleted": chain})
        return records


def _repo(name: str) -> str:
    return parse(name, default_tag=None).name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""`docker pull`: manifest (and index), config and layers from a registry into the store.

:func:`prepare` does everything that can fail cheaply before the API answer starts
(reaching the registry, credentials, the manifest, the platform, the config), so those
failures are proper error statuses. :meth:`PullPlan.run` then downloads the missing layers
in parallel while the store extracts them as they arrive (into its staging area; a
layer's extraction ends only once its blob's digest matched); the store commits nothing
until every layer matched its digest and its DiffID.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from agent.errors import AgentError, NotFound
from agent.images.reference import Reference, familiar
from agent.images.store import Image, ImageStore, InvalidImage, chain_ids
from agent.registry import auth, manifest
from agent.registry.blobcache import BlobCache, Known
from agent.registry.client import RegistryError, RepositoryClient, Unauthorized
from agent.registry.download import WORKERS, Downloads, Following
from agent.registry.endpoint import resolve
from agent.registry.manifest import Descriptor, ImageManifest, Platform
from agent.registry.options import RegistryOptions
from agent.registry.progress import Progress

# Layers extracted at once, each into its own directory: as many as download at once,
# since each extraction follows its download and mostly waits for it.
EXTRACTORS = WORKERS

log = logging.getLogger(__name__)

MAX_CONFIG = 8 << 20


class PullDenied(NotFound):
    pass


@dataclass
class Places:
    """Where a pull or push keeps its files under the engine root."""

    downloads: Path
    blob_cache: BlobCache

    @classmethod
    def under(cls, root: str | Path) -> Places:
        base = Path(root)
        return cls(base / "downloads", BlobCache(base / "registry" / "blobs.json"))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _denied(ref: Reference, creds: auth.Credentials, error: RegistryError) -> AgentError:
    """What dockerd answers when the registry will not show a repository."""
    if isinstance(error, Unauthorized) and not creds.anonymous:
        return AgentError(403, f"pull of {familiar(ref)} refused: {error.message}")
    if (
        isinstance(error, Unauthorized)
        or error.status in (401, 403)
        or "name unknown" in (error.message)
    ):
        return PullDenied(
            f"pull access denied for {ref.familiar_name}, repository does not exist or may "
            f"require 'docker login': {error.message}"
        )
    if error.status == 404:
        return NotFound(f"manifest for {familiar(ref)} not found: {error.message}")
    return error


def fetch_manifest(client: RepositoryClient, reference: str) -> tuple[bytes, str, str]:
    """(body, content type, digest); a digest reference is checked against the body."""
    response = client.request(
        "GET", client.path(f"manifests/{reference}"), {"Accept": manifest.ACCEPT}
    )
    body = response.read(manifest.MAX_MANIFEST + 1)
    if len(body) > manifest.MAX_MANIFEST:
        response.close()
        raise RegistryError(502, f"the manifest of {reference} is larger than 4 MiB")
    digest = _digest(body)
    if reference.startswith("sha256:") and digest != reference:
        raise RegistryError(
            502, f"manifest verification failed: asked for {reference}, received {digest}"
        )
    return body, response.getheader("Content-Type", ""), digest


def fetch_small_blob(client: RepositoryClient, blob: Descriptor, limit: int) -> bytes:
    if blob.size > limit:
        raise RegistryError(502, f"blob {blob.digest} is too large ({blob.size} bytes)")
    response = client.request("GET", client.path(f"blobs/{blob.digest}"))
    body = response.read(blob.size + 1)
    if len(body) != blob.size or _digest(body) != blob.digest:
        response.close()
        raise RegistryError(
            502, f"verification failed for blob {blob.digest}: its content does not match"
        )
    return body


@dataclass
class PullPlan:
    ref: Reference
    client: RepositoryClient
    manifest_digest: str  # what RepoDigests names: the index's digest for a multi-arch image
    image: ImageManifest
    config_bytes: bytes
    store: ImageStore
    places: Places

    @property
    def image_id(self) -> str:
        return _digest(self.config_bytes)

    def run(self, progress: Progress) -> Image:
        ref = self.ref
        progress.status(f"Pulling from {ref.path}", ref.digest or ref.tag)
        digest_ref = Reference(ref.domain, ref.path, "", self.manifest_digest)
        was = self.store.tags().get(str(ref)) if ref.tag else None
        known_digest = self.manifest_digest in {
            r.split("@")[-1] for r in self._repo_digests_of(self.image_id)
        }
        image = self._store_image(progress)
        self._remember_blobs(image)
        if ref.tag:
            self.store.tag(image.id, ref)
        self.store.add_digest_reference(image.id, digest_ref)
        progress.status(f"Digest: {self.manifest_digest}")
        up_to_date = was == image.id if ref.tag else known_digest
        shown = familiar(ref)
        if up_to_date:
            progress.status(f"Status: Image is up to date for {shown}")
        else:
            progress.status(f"Status: Downloaded newer image for {shown}")
        return self.store.get(image.id)

    def _repo_digests_of(self, image_id: str) -> list[str]:
        try:
            return self.store.get(image_id).repo_digests
        except NotFound:
            return []

    def _store_image(self, progress: Progress) -> Image:
        try:
            config = json.loads(self.config_bytes)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        except (ValueError, AttributeError):
            raise InvalidImage("the image config is not a JSON object with rootfs") from None
        layers = self.image.layers
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise InvalidImage(
                f"the image config lists {len(diff_ids)} layers, its manifest {len(layers)}"
            )
        chains = chain_ids(diff_ids)
        needed = [i for i, c in enumerate(chains) if not self.store.has_layer_chain(c)]
        if not needed and self.store.has_image(self.image_id):
            return self.store.get(self.image_id)
        for index, layer in enumerate(layers):
            progress.layer(layer.short, "Pulling fs layer" if index in needed else "Already exists")
        for index in needed[WORKERS:]:
            progress.layer(layers[index].short, "Waiting")
        downloads = Downloads(self.client, self.places.downloads, progress)
        try:
            for index in needed:
                downloads.start(layers[index])

            def open_layer(index: int) -> BinaryIO:
                blob = layers[index]
                return cast(BinaryIO, _Extracting(downloads.open(blob), blob, progress))

            try:
                image = self.store.load_layers_and_config(
                    self.config_bytes, open_layer, parallel=EXTRACTORS
                )
            except AgentError:
                # A layer read while it arrived may fail to inflate or untar before its
                # blob fails its digest: the digest is the true story (the registry sent
                # other content), so that error wins.
                downloads.raise_first_failure()
                raise
            downloads.release(delete=True)  # in the store now; a failed pull keeps them
        finally:
            downloads.close()
        return image

    def _remember_blobs(self, image: Image) -> None:
        registry = self.client.endpoint.name
        for diff_id, blob in zip(image.diff_ids, self.image.layers, strict=True):
            if blob.media_type in (
                manifest.DOCKER_LAYER_GZIP,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ):
                known = Known(blob.digest, blob.size, registry, self.ref.path)
                try:
                    self.places.blob_cache.remember(diff_id, known)
                except OSError as exc:
                    log.warning("could not note blob %s: %s", blob.digest, exc)


class _Extracting:
    """A blob read by the store as it arrives (its end only once verified), counted for
    "Extracting" (shown once the download is complete, as docker does) and "Pull
    complete"."""

    def __init__(self, blob_file: Following, blob: Descriptor, progress: Progress) -> None:
        self._file = blob_file
        self._blob = blob
        self._progress = progress
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._count += len(data)
        if self._file.done:
            self._progress.bytes(self._blob.short, "Extracting", self._count, self._blob.size)
        return data

    def close(self) -> None:
        self._file.close()
        if self._count == self._blob.size and self._file.verified:
            self._progress.layer(self._blob.short, "Pull complete")


def prepare(
    ref: Reference,
    creds: auth.Credentials,
    wanted: Platform | None,
    store: ImageStore,
    places: Places,
    options: RegistryOptions,
) -> PullPlan:
    endpoint = resolve(ref.domain, options)
    client = RepositoryClient(endpoint, ref.path, creds, "pull", options)
    try:
        try:
            body, content_type, digest = fetch_manifest(client, ref.digest or ref.tag)
        except RegistryError as error:
            raise _denied(ref, creds, error) from None
        data = manifest.load(body, content_type)
        media = manifest.kind(data, content_type)
        manifest_digest = digest
        if media in (manifest.OCI_INDEX, manifest.DOCKER_LIST):
            chosen = manifest.choose(data, wanted or manifest.engine_platform())
            body, content_type, digest = fetch_manifest(client, chosen.digest)
            data = manifest.load(body, content_type)
            media = manifest.kind(data, content_type)
            if media in (manifest.OCI_INDEX, manifest.DOCKER_LIST):
                raise RegistryError(400, f"{familiar(ref)}: nested image indexes are not supported")
        image = manifest.image_manifest(data)
        config_bytes = fetch_small_blob(client, image.config, MAX_CONFIG)
        if wanted is not None:
            _check_platform(ref, config_bytes, wanted)
    except BaseException:
        client.close()
        raise
    return PullPlan(ref, client, manifest_digest, image, config_bytes, store, places)


def _check_platform(ref: Reference, config_bytes: bytes, wanted: Platform) -> None:
    try:
        config = json.loads(config_bytes)
    except ValueError:
        raise InvalidImage("the image config is not valid JSON") from None
    found = Platform(str(config.get("os") or ""), str(config.get("architecture") or ""))
    if (found.os, found.architecture) != (wanted.os, wanted.architecture):
        raise NotFound(
            f"image with reference {familiar(ref)} was found but does not match the specified "
            f"platform: wanted {wanted}, actual: {found}"
        )


def pull(
    name: str,
    store: ImageStore,
    engine_root: str | Path,
    credentials: auth.Credentials | None = None,
    progress: Progress | None = None,
    platform: Platform | None = None,
) -> Image:
    """Pull ``name`` (``:latest`` implied) into ``store`` in one call, for the engine's
    own users (a Dockerfile's FROM); progress goes to ``progress`` when given."""
    from agent.images.reference import parse
    from agent.registry.options import current

    ref = parse(name)
    plan = prepare(
        ref,
        credentials or auth.Credentials(),
        platform,
        store,
        Places.under(engine_root),
        current(),
    )
    try:
        return plan.run(progress or Progress(None))
    finally:
        plan.client.close()

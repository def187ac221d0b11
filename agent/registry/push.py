"""`docker push`: an image's layers (gzip-compressed), config and schema 2 manifest.

Each layer's compressed digest is remembered per registry and repository (BlobCache), so
a second push only asks whether the registry has it, and a push to another repository of
the same registry mounts it from there instead of uploading. Layers are rebuilt byte for
byte from the store's tar records (as `docker save` does) and compressed with a fixed
gzip header, so the same layer always compresses to the same blob.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.images.reference import Reference
from agent.images.store import Image, ImageStore
from agent.images.tarsplit import LayerTarReader
from agent.registry import auth, manifest
from agent.registry.blobcache import Known
from agent.registry.client import BLOCK, RegistryError, RepositoryClient
from agent.registry.endpoint import resolve
from agent.registry.manifest import Descriptor
from agent.registry.options import RegistryOptions
from agent.registry.progress import Progress
from agent.registry.pull import Places

log = logging.getLogger(__name__)

WORKERS = 3
MONOLITHIC_MAX = 16 << 20  # bigger blobs go up in chunks of this size
GZIP_LEVEL = 6  # what docker uses: a good trade of speed and size


@dataclass(frozen=True)
class Pushed:
    tag: str
    digest: str
    size: int


def _short(diff_id: str) -> str:
    return diff_id.removeprefix("sha256:")[:12]


def compress_layer(store: ImageStore, chain: str, diff_id: str, directory: Path) -> Descriptor:
    """The layer's tar, gzip-compressed into a temp file under ``directory``; its descriptor
    carries the file's path as its only URL."""
    directory.mkdir(parents=True, exist_ok=True)
    reader = LayerTarReader(store.layer_dir(chain), diff_id, store.layer_tar_size(chain))
    fd, temp = tempfile.mkstemp(dir=directory, prefix="push-", suffix=".gz")
    hasher = hashlib.sha256()
    size = 0
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip, mtime 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                data = reader.read(BLOCK)
                packed = compressor.compress(data) if data else compressor.flush()
                hasher.update(packed)
                out.write(packed)
                size += len(packed)
                if not data:
                    break
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    digest = "sha256:" + hasher.hexdigest()
    return Descriptor(manifest.DOCKER_LAYER_GZIP, digest, size, (temp,))


class _Counting:
    """A file read by http.client for an upload, reporting "Pushing" as it goes."""

    def __init__(self, path: str, offset: int, length: int, report: _Report) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by the client after sending
        self._file.seek(offset)
        self._left = length
        self._report = report

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = self._file.read(want)
        self._left -= len(data)
        self._report(len(data))
        return data

    def close(self) -> None:
        self._file.close()


class _Report:
    def __init__(self, progress: Progress, id: str, total: int) -> None:
        self.progress, self.id, self.total, self.sent = progress, id, total, 0

    def __call__(self, count: int) -> None:
        self.sent += count
        self.progress.bytes(self.id, "Pushing", self.sent, self.total)

    def restart(self, sent: int) -> None:
        self.sent = sent


class Pusher:
    def __init__(
        self,
        ref: Reference,
        image: Image,
        store: ImageStore,
        client: RepositoryClient,
        places: Places,
    ) -> None:
        self.ref = ref
        self.image = image
        self.store = store
        self.client = client
        self.places = places
        self.registry = client.endpoint.name
        self._lock = threading.Lock()

    # --- blobs ------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        response = self.client.request(
            "HEAD", self.client.path(f"blobs/{digest}"), expect=(200, 404)
        )
        response.read()
        return response.status == 200

    def try_mount(self, blob: Known) -> bool:
        query = urllib.parse.urlencode({"mount": blob.digest, "from": blob.repository})
        response = self.client.request(
            "POST", self.client.path(f"blobs/uploads/?{query}"), expect=(201, 202)
        )
        response.read()
        if response.status == 202:  # no mount: the registry opened an upload; drop it
            location = response.getheader("Location", "")
            if location:
                try:
                    self.client.request("DELETE", location, expect=(204, 404)).read()
                except RegistryError as exc:
                    log.debug("could not cancel the upload at %s: %s", location, exc)
            return False
        return True

    def _location(self, response: http.client.HTTPResponse) -> str:
        return upload_location(self.client, response)

    def push_layer(self, index: int, progress: Progress) -> Descriptor:
        diff_id = self.image.diff_ids[index]
        chain = self.image.chain_ids[index]
        id = _short(diff_id)
        known = self.places.blob_cache.lookup(diff_id, self.registry)
        for entry in known:
            if entry.repository == self.ref.path and self.blob_exists(entry.digest):
                progress.layer(id, "Layer already exists")
                return Descriptor(manifest.DOCKER_LAYER_GZIP, entry.digest, entry.size)
        for entry in known:
            if entry.repository == self.ref.path:
                continue
            self.client.add_scope(f"repository:{entry.repository}:pull")
            if self.try_mount(entry):
                progress.layer(id, f"Mounted from {entry.repository}")
                self._remember(diff_id, entry.digest, entry.size)
                return Descriptor(manifest.DOCKER_LAYER_GZIP, entry.digest, entry.size)
        blob = compress_layer(self.store, chain, diff_id, self.places.downloads)
        path = blob.urls[0]
        try:
            if self.blob_exists(blob.digest):
                progress.layer(id, "Layer already exists")
            else:
                report = _Report(progress, id, blob.size)
                upload_blob(self.client, path, blob, report)
                progress.layer(id, "Pushed")
        finally:
            Path(path).unlink(missing_ok=True)
        self._remember(diff_id, blob.digest, blob.size)
        return Descriptor(blob.media_type, blob.digest, blob.size)

    def _remember(self, diff_id: str, digest: str, size: int) -> None:
        try:
            self.places.blob_cache.remember(
                diff_id, Known(digest, size, self.registry, self.ref.path)
            )
        except OSError as exc:
            log.warning("could not note blob %s: %s", digest, exc)

    # --- the image --------------------------------------------------------------------

    def run(self, progress: Progress) -> Pushed:
        image = self.image
        count = len(image.diff_ids)
        for index in reversed(range(count)):
            progress.layer(_short(image.diff_ids[index]), "Preparing")
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="push") as pool:
            futures = [pool.submit(self.push_layer, i, progress) for i in range(count)]
            layers = [future.result() for future in futures]
        config_bytes = self.store.config_bytes(image.id)
        config = Descriptor(manifest.DOCKER_CONFIG, image.id, len(config_bytes))
        if not self.blob_exists(image.id):
            self._upload_bytes(config_bytes, config)
        document = {
            "schemaVersion": 2,
            "mediaType": manifest.DOCKER_MANIFEST,
            "config": _descriptor_json(config),
            "layers": [_descriptor_json(layer) for layer in layers],
        }
        body = json.dumps(document, indent=3).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = self.client.request(
            "PUT",
            self.client.path(f"manifests/{self.ref.tag}"),
            {"Content-Type": manifest.DOCKER_MANIFEST},
            body,
            expect=(201,),
        )
        response.read()
        answered = response.getheader("Docker-Content-Digest", "")
        if answered and answered != digest:
            raise RegistryError(
                502, f"the registry stored the manifest as {answered}, not {digest}"
            )
        self.store.add_digest_reference(
            image.id, Reference(self.ref.domain, self.ref.path, "", digest)
        )
        return Pushed(self.ref.tag, digest, len(body))

    def _upload_bytes(self, data: bytes, blob: Descriptor) -> None:
        response = self.client.request(
            "POST", self.client.path("blobs/uploads/"), {"Content-Length": "0"}, b"", expect=(202,)
        )
        response.read()
        response = self.client.request(
            "PUT",
            _with_query(self._location(response), digest=blob.digest),
            {"Content-Type": "application/octet-stream"},
            data,
            expect=(201,),
        )
        response.read()


def _descriptor_json(blob: Descriptor) -> dict[str, object]:
    return {"mediaType": blob.media_type, "size": blob.size, "digest": blob.digest}


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def prepare(
    ref: Reference,
    creds: auth.Credentials,
    store: ImageStore,
    places: Places,
    options: RegistryOptions,
) -> Pusher:
    """Find the image and make sure we may push (credentials checked before any output)."""
    image = store.get(str(ref))
    client = RepositoryClient(resolve(ref.domain, options), ref.path, creds, "pull,push", options)
    try:
        # an upload we start and cancel at once: the cheapest request that needs push rights
        response = client.request(
            "POST", client.path("blobs/uploads/"), {"Content-Length": "0"}, b"", expect=(202,)
        )
        response.read()
        location = response.getheader("Location", "")
        if location:
            target = urllib.parse.urljoin(client.base_url + client.path("blobs/uploads/"), location)
            try:
                client.request("DELETE", target, expect=(204, 404, 405)).read()
            except RegistryError as exc:
                log.debug("could not cancel the probe upload: %s", exc)
    except BaseException:
        client.close()
        raise
    return Pusher(ref, image, store, client, places)


def upload_blob(client: RepositoryClient, path: str, blob: Descriptor, report: _Report) -> None:
    """POST an upload, PATCH chunks of MONOLITHIC_MAX while more is left, PUT the rest."""
    response = client.request(
        "POST", client.path("blobs/uploads/"), {"Content-Length": "0"}, b"", expect=(202,)
    )
    response.read()
    location = upload_location(client, response)
    offset = 0
    if blob.size > MONOLITHIC_MAX:
        while blob.size - offset > MONOLITHIC_MAX:
            length = MONOLITHIC_MAX
            start = offset
            report.restart(start)
            response = client.request(
                "PATCH",
                location,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                    "Content-Range": f"{start}-{start + length - 1}",
                },
                functools.partial(_Counting, path, start, length, report),
                expect=(202,),
            )
            response.read()
            location = upload_location(client, response)
            offset += length
    rest = blob.size - offset
    report.restart(offset)
    response = client.request(
        "PUT",
        _with_query(location, digest=blob.digest),
        {"Content-Type": "application/octet-stream", "Content-Length": str(rest)},
        lambda: _Counting(path, offset, rest, report),
        expect=(201,),
    )
    response.read()
    answered = response.getheader("Docker-Content-Digest", "")
    if answered and answered != blob.digest:
        raise RegistryError(
            502, f"the registry stored {answered} for the blob {blob.digest}: upload corrupted"
        )


def upload_location(client: RepositoryClient, response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location", "")
    if not location:
        raise RegistryError(502, "the registry started an upload without a Location")
    return urllib.parse.urljoin(client.base_url + client.path("blobs/uploads/"), location)

"""`docker save`: the archive's layout, layers written back byte for byte, tag selection."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from agent.images import tarsplit
from agent.images.archive import load_archive
from agent.images.layers import extract_layer
from agent.images.reference import InvalidReference
from agent.images.save import SavePlan, select
from agent.images.store import ImageNotFound, ImageStore
from agent.images.tarsplit import LayerTarReader, SplitRecorder, TarSplitError
from images.busybox import build_container_image

MTIME = 1_700_000_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def info(
    name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **extra: object
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size, member.type, member.mtime, member.mode = size, kind, MTIME, 0o644
    for key, value in extra.items():
        setattr(member, key, value)
    return member


def tar_of(
    entries: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for member, data in entries:
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, len(data)), data


def image_archive(layers: list[bytes], tag: str = "test/app:1") -> bytes:
    """A docker-save archive (legacy manifest.json only) of an image with these layers."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": [
                    sha(gzip.decompress(x)) if x[:2] == b"\x1f\x8b" else sha(x) for x in layers
                ],
            },
        }
    ).encode()
    files: list[tuple[tarfile.TarInfo, bytes | None]] = [regular("config.json", config)]
    names = []
    for number, data in enumerate(layers):
        names.append(f"layer{number}.tar")
        files.append(regular(names[-1], data))
    manifest = [{"Config": "config.json", "RepoTags": [tag], "Layers": names}]
    files.append(regular("manifest.json", json.dumps(manifest).encode()))
    return tar_of(files)


def members(data: bytes) -> dict[str, bytes]:
    """Each member of a tar by name (b"" for directories), in order."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member) if member.isfile() else None
            files[member.name] = handle.read() if handle is not None else b""
    return files


def save(store: ImageStore, *names: str) -> dict[str, bytes]:
    out = io.BytesIO()
    SavePlan(store, select(store, names)).write(out)
    return members(out.getvalue())


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


BUSYBOX = build_container_image(
    b"\x7fELF pretend busybox\n" * 300, ["/bin/sh", "/bin/ls"], "t", MTIME
)


# --- the archive -----------------------------------------------------------------------------


def test_save_writes_the_oci_layout_and_docker_manifest(store: ImageStore) -> None:
    load_archive(store, io.BytesIO(BUSYBOX.tarball))
    files = save(store, "busybox")
    layer_blob = "blobs/sha256/" + BUSYBOX.layer_digest[7:]
    config_blob = "blobs/sha256/" + BUSYBOX.image_id[7:]
    assert files[layer_blob] == members(BUSYBOX.tarball)[layer_blob]
    assert sha(files[config_blob]) == BUSYBOX.image_id
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(files["manifest.json"]) == [
        {"Config": config_blob, "RepoTags": ["busybox:latest"], "Layers": [layer_blob]}
    ]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": BUSYBOX.layer_digest[7:]}}
    index = json.loads(files["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [descriptor] = index["manifests"]
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "docker.io/library/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    assert descriptor["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest_blob = files["blobs/sha256/" + descriptor["digest"][7:]]
    assert sha(manifest_blob) == descriptor["digest"] and len(manifest_blob) == descriptor["size"]
    manifest = json.loads(manifest_blob)
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": BUSYBOX.image_id,
        "size": len(files[config_blob]),
    }
    assert manifest["layers"] == [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": BUSYBOX.layer_digest,
            "size": len(files[layer_blob]),
        }
    ]


def test_saved_archive_loads_back_into_a_fresh_store(store: ImageStore, tmp_path: Path) -> None:
    load_archive(store, io.BytesIO(BUSYBOX.tarball))
    store.tag("busybox", "other/name:2")
    out = io.BytesIO()
    SavePlan(store, select(store, ["busybox", "other/name:2"])).write(out)
    fresh = ImageStore(tmp_path / "fresh")
    loaded = load_archive(fresh, io.BytesIO(out.getvalue()))
    assert [(x.image_id, x.tags) for x in loaded] == [
        (BUSYBOX.image_id, ["busybox:latest", "other/name:2"])
    ]
    # the OCI layout alone is enough too (what an OCI tool reads)
    files = save(store, "busybox")
    del files["manifest.json"]
    oci_only = tar_of([regular(name, data) for name, data in files.items() if data or "." in name])
    again = ImageStore(tmp_path / "again")
    assert [x.image_id for x in load_archive(again, io.BytesIO(oci_only))] == [BUSYBOX.image_id]


def test_select_names_as_dockerd_does(store: ImageStore) -> None:
    load_archive(store, io.BytesIO(BUSYBOX.tarball))
    store.tag("busybox", "busybox:second")
    store.tag("busybox", "elsewhere:1")
    by_repo = select(store, ["busybox"])
    assert [str(t) for t in by_repo[0].tags] == [
        "docker.io/library/busybox:latest",
        "docker.io/library/busybox:second",
    ]
    by_tag = select(store, ["elsewhere:1"])
    assert [str(t) for t in by_tag[0].tags] == ["docker.io/library/elsewhere:1"]
    by_id = select(store, [BUSYBOX.image_id[7:19]])
    assert by_id[0].image.id == BUSYBOX.image_id and by_id[0].tags == []
    assert len(select(store, ["busybox", "elsewhere:1", BUSYBOX.image_id])) == 1
    with pytest.raises(ImageNotFound, match="No such image: nothere:latest"):
        select(store, ["nothere"])
    with pytest.raises(ImageNotFound, match="No such image: busybox:missing"):
        select(store, ["busybox:missing"])
    with pytest.raises(InvalidReference):
        select(store, [""])


def test_saving_by_id_leaves_the_image_untagged(store: ImageStore) -> None:
    load_archive(store, io.BytesIO(BUSYBOX.tarball))
    files = save(store, BUSYBOX.image_id)
    assert json.loads(files["manifest.json"])[0]["RepoTags"] is None
    assert "repositories" not in files
    [descriptor] = json.loads(files["index.json"])["manifests"]
    assert "annotations" not in descriptor


def test_shared_layers_are_written_once(store: ImageStore) -> None:
    base = tar_of([regular("etc/base", b"base")])
    load_archive(store, io.BytesIO(image_archive([base], "one:1")))
    load_archive(store, io.BytesIO(image_archive([base, tar_of([regular("x", b"x")])], "two:1")))
    out = io.BytesIO()
    SavePlan(store, select(store, ["one:1", "two:1"])).write(out)
    names = [m.name for m in tarfile.TarFile(fileobj=io.BytesIO(out.getvalue()))]
    assert names.count("blobs/sha256/" + sha(base)[7:]) == 1
    assert len(json.loads(members(out.getvalue())["manifest.json"])) == 2


# --- layers byte for byte ---------------------------------------------------------------------


def roundtrip(store: ImageStore, layer: bytes) -> bytes:
    """Load an image with this one layer, save it, return the saved layer blob."""
    load_archive(store, io.BytesIO(image_archive([layer])))
    plain = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    return save(store, "test/app:1")["blobs/sha256/" + sha(plain)[7:]]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_layers_come_back_byte_for_byte(store: ImageStore, fmt: int) -> None:
    long_name = "deep/" + "d" * 120 + "/file"
    entries = [
        (info("app/", kind=tarfile.DIRTYPE, mode=0o755), None),
        regular("app/a.txt", b"hello\n" * 1000),
        regular("app/empty", b""),
        (info("app/link", kind=tarfile.SYMTYPE, linkname="a.txt"), None),
        (info("app/hard", kind=tarfile.LNKTYPE, linkname="app/a.txt"), None),
        regular("app/odd-size", b"x" * 513),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        entries.append(regular(long_name, b"long name"))
    if fmt == tarfile.PAX_FORMAT:
        entries.append(regular("app/ünïcode", b"u"))
    layer = tar_of(entries, fmt)
    assert roundtrip(store, layer) == layer


def test_a_compressed_layer_is_saved_uncompressed(store: ImageStore) -> None:
    plain = tar_of([regular("a", b"a" * 10000)])
    assert roundtrip(store, gzip.compress(plain)) == plain


def test_files_the_layer_replaces_are_kept_for_the_record(store: ImageStore) -> None:
    """The same name twice, a file replaced by a directory, a directory by a file."""
    layer = tar_of(
        [
            regular("twice", b"first version"),
            regular("twice", b"second, longer version"),
            regular("was-file", b"old file content"),
            (info("was-file/", kind=tarfile.DIRTYPE), None),
            regular("was-file/inner", b"inner"),
            regular("dir/a", b"in a dir"),
            regular("dir/sub/b", b"deeper"),
            regular("dir", b"now a file"),
        ]
    )
    assert roundtrip(store, layer) == layer
    image = store.get("test/app:1")
    diff = image.layer_dirs[0]
    assert (diff / "twice").read_bytes() == b"second, longer version"
    assert (diff / "dir").read_bytes() == b"now a file"
    assert (diff / "was-file" / "inner").read_bytes() == b"inner"
    rescued = diff.parent / tarsplit.RESCUED
    assert sorted(p.read_bytes() for p in rescued.iterdir()) == sorted(
        [b"first version", b"old file content", b"in a dir", b"deeper"]
    )


def test_trailing_zero_blocks_and_padding_count(store: ImageStore) -> None:
    layer = tar_of([regular("a", b"1")]) + b"\0" * 10240  # padded as a tape record
    assert roundtrip(store, layer) == layer


def test_a_changed_file_is_caught_not_written(store: ImageStore) -> None:
    layer = tar_of([regular("etc/conf", b"original")])
    load_archive(store, io.BytesIO(image_archive([layer])))
    image = store.get("test/app:1")
    (image.layer_dirs[0] / "etc" / "conf").write_bytes(b"tampered")
    with pytest.raises(TarSplitError, match="its files changed"):
        save(store, "test/app:1")
    (image.layer_dirs[0] / "etc" / "conf").write_bytes(b"short")
    with pytest.raises(TarSplitError, match="shorter than it was"):
        save(store, "test/app:1")


def test_a_layer_without_a_record_is_refused_then_repaired_by_a_load(store: ImageStore) -> None:
    layer = tar_of([regular("etc/conf", b"original")])
    archive = image_archive([layer])
    load_archive(store, io.BytesIO(archive))
    chain = store.get("test/app:1").chain_ids[0]
    (store.layer_dir(chain) / tarsplit.RECORD).unlink()  # as an older agent stored it
    meta = store.layer_meta(chain)
    del meta["tar_size"]
    (store.layer_dir(chain) / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TarSplitError, match="load the image again"):
        save(store, "test/app:1")
    load_archive(store, io.BytesIO(archive))
    assert save(store, "test/app:1")["blobs/sha256/" + sha(layer)[7:]] == layer
    assert store.layer_meta(chain)["tar_size"] == len(layer)


def test_recorder_keeps_headers_only(tmp_path: Path) -> None:
    big = b"\x00\x01" * 500_000
    layer = tar_of([regular("big", big)])
    (tmp_path / "l").mkdir()
    recorder = SplitRecorder(tmp_path / "l")
    result = extract_layer(io.BytesIO(layer), tmp_path / "l" / "diff", split=recorder)
    assert recorder.finish() == len(layer)
    assert result.diff_id == sha(layer)
    assert (tmp_path / "l" / tarsplit.RECORD).stat().st_size < 2000
    assert tarsplit.tar_size(tmp_path / "l") == len(layer)
    reader = LayerTarReader(tmp_path / "l", sha(layer), len(layer))
    rebuilt = b"".join(iter(lambda: reader.read(7777), b""))
    assert rebuilt == layer
    # a symlink put where a recorded file was is not followed
    shutil.move(tmp_path / "l" / "diff" / "big", tmp_path / "elsewhere")
    (tmp_path / "l" / "diff" / "big").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TarSplitError, match="cannot read 'big'"):
        b"".join(tarsplit.assemble(tmp_path / "l"))

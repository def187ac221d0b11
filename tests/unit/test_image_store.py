"""The image store: layers by ChainID, tags, lookup, `rmi` semantics, and `docker load`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.images.archive import ArchiveError, load_archive
from agent.images.layers import LayerError, extract_layer
from agent.images.store import (
    ImageInUse,
    ImageNotFound,
    ImageStore,
    InvalidImage,
    chain_ids,
)
from agent.images.tarsplit import SplitRecorder, assemble
from images.busybox import build_container_image

MTIME = 1_700_000_000
FAKE_BUSYBOX = b"\x7fELF pretend busybox\n" * 10
APPLETS = ["/bin/sh", "/bin/ls", "/usr/bin/env"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def config(layers: list[bytes], created: str = "2024-01-01T00:00:00Z", **extra: object) -> bytes:
    body = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(data) for data in layers]},
        **extra,
    }
    return json.dumps(body, sort_keys=True).encode()


def opener(layers: list[bytes], calls: list[int] | None = None) -> Callable[[int], BinaryIO]:
    def open_layer(index: int) -> BinaryIO:
        if calls is not None:
            calls.append(index)
        return io.BytesIO(layers[index])

    return open_layer


def load(store: ImageStore, layers: list[bytes], created: str = "2024-01-01T00:00:00Z") -> str:
    return store.load_layers_and_config(config(layers, created), opener(layers)).id


def contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


BASE = layer({"etc/os-release": b"base\n", "bin/tool": b"tool"})
TOP = layer({"app/main": b"main program"})
OTHER_TOP = layer({"srv/data": b"other"})


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


# --- layers and chain ids -------------------------------------------------------------


def test_chain_ids_follow_the_oci_definition() -> None:
    d1, d2, d3 = sha(b"1"), sha(b"2"), sha(b"3")
    c2 = sha(f"{d1} {d2}".encode())
    c3 = sha(f"{c2} {d3}".encode())
    assert chain_ids([d1, d2, d3]) == [d1, c2, c3]
    assert chain_ids([]) == []


def test_extract_computes_diff_id_of_plain_and_gzip(tmp_path: Path) -> None:
    plain = extract_layer(io.BytesIO(TOP), tmp_path / "plain")
    zipped = extract_layer(io.BytesIO(gzip.compress(TOP)), tmp_path / "gz")
    assert plain.diff_id == zipped.diff_id == sha(TOP)
    assert plain.size == len(b"main program")
    assert (tmp_path / "gz" / "app" / "main").read_bytes() == b"main program"
    assert (tmp_path / "gz" / "app" / "main").stat().st_mtime == MTIME


def test_extract_refuses_zstd_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="zstd-compressed layers are not supported"):
        extract_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100), tmp_path / "z")
    assert not (tmp_path / "z").exists()
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract_layer(io.BytesIO(gzip.compress(b"not a tar" * 100)), tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_extract_gzip_members_padding_and_damage(tmp_path: Path) -> None:
    big = layer({"app/big": bytes(range(256)) * 12_000})  # inflates past one read
    # Two members back to back, then zero padding: one tar, as GzipFile reads it.
    half = len(big) // 2
    two = gzip.compress(big[:half]) + gzip.compress(big[half:], 1) + b"\0" * 700
    info = extract_layer(io.BytesIO(two), tmp_path / "two")
    assert info.diff_id == sha(big)
    assert (tmp_path / "two" / "app" / "big").read_bytes() == bytes(range(256)) * 12_000
    whole = gzip.compress(big)
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract_layer(io.BytesIO(whole[: len(whole) // 2]), tmp_path / "cut")
    assert not (tmp_path / "cut").exists()
    bad_crc = whole[:-8] + bytes(b ^ 0xFF for b in whole[-8:-4]) + whole[-4:]
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract_layer(io.BytesIO(bad_crc), tmp_path / "crc")
    assert not (tmp_path / "crc").exists()
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract_layer(io.BytesIO(whole + b"trailing garbage"), tmp_path / "tail")


def test_extract_a_tar_cut_inside_a_file(tmp_path: Path) -> None:
    whole = layer({"a": b"x" * 3000, "b": b"y" * 5000})
    cut = whole[: 512 * 8]  # inside b's content
    with pytest.raises(LayerError, match="after entry .b.: its content is cut short"):
        extract_layer(io.BytesIO(cut), tmp_path / "cut")
    assert not (tmp_path / "cut").exists()


def test_extract_long_names_and_sparse_files(tmp_path: Path) -> None:
    """Sparse members (GNU's old format and PAX 1.0) go through tarfile's own reader, the
    rest through the layer stream: both must agree with GNU tar."""
    source = tmp_path / "src"
    deep = source / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"long name")
    with open(source / "holes", "wb") as handle:
        handle.write(b"start")
        handle.seek(3 << 20)
        handle.write(b"end")
    (source / "after").write_bytes(b"z" * 70_000)
    for form in ("gnu", "posix"):
        tar = tmp_path / f"{form}.tar"
        subprocess.run(
            ["tar", "--sparse", f"--format={form}", "-C", str(source), "-cf", str(tar), "."],
            check=True,
        )
        data = tar.read_bytes()
        dest = tmp_path / form
        info = extract_layer(io.BytesIO(gzip.compress(data, 1)), dest)
        assert info.diff_id == sha(data)
        assert (dest / deep.relative_to(source) / "f").read_bytes() == b"long name"
        holes = (dest / "holes").read_bytes()
        assert len(holes) == (3 << 20) + 3
        assert holes.startswith(b"start\0") and holes.endswith(b"\0end")
        assert (dest / "after").read_bytes() == b"z" * 70_000


def test_extract_refuses_damaged_headers_with_a_layer_error(tmp_path: Path) -> None:
    # a PAX header claiming 32 MiB of header data: refused before anything is read
    pax = bytearray(layer({"n" * 120: b"x"}))
    pax[124:136] = b"%011o\0" % (32 << 20)
    pax[148:156] = b"        "
    pax[148:156] = b"%06o\0 " % sum(pax[:512])
    with pytest.raises(LayerError, match="a header claims 33554432 bytes"):
        extract_layer(io.BytesIO(bytes(pax)), tmp_path / "big")
    # a negative size (base-256): tarfile would take the archive to end there
    negative = bytearray(layer({"first": b"1", "hidden": b"2"}))
    negative[1024 + 124 : 1024 + 136] = b"\xff" + (256**11 - 600).to_bytes(11, "big")
    negative[1024 + 148 : 1024 + 156] = b"        "
    negative[1024 + 148 : 1024 + 156] = b"%06o\0 " % sum(negative[1024:1536])
    with pytest.raises(LayerError, match="'hidden' has a negative size"):
        extract_layer(io.BytesIO(bytes(negative)), tmp_path / "negative")
    # a sparse map that is not numbers (tarfile raises ValueError)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sparse")
        info.pax_headers = {"GNU.sparse.map": "a,b", "GNU.sparse.size": "10"}
        tar.addfile(info)
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract_layer(io.BytesIO(buffer.getvalue()), tmp_path / "map")
    assert not (tmp_path / "big").exists() and not (tmp_path / "map").exists()


def test_extract_records_padding_without_holding_it(tmp_path: Path) -> None:
    """Padding after the end of the archive belongs to the tar (its DiffID, its replay),
    but the recorder writes it out as it goes instead of gathering all of it."""
    data = layer({"f": b"content"}) + bytes(48 << 20)
    (tmp_path / "l").mkdir()
    recorder = SplitRecorder(tmp_path / "l")
    tracemalloc.start()
    try:
        info = extract_layer(io.BytesIO(gzip.compress(data, 1)), tmp_path / "l" / "diff", recorder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recorder.finish() == len(data)
    assert info.diff_id == sha(data)
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"
    assert hashlib.sha256(b"".join(assemble(tmp_path / "l"))).hexdigest() == sha(data)[7:]


def test_extract_refuses_traversal_and_cleans_up(tmp_path: Path) -> None:
    bad = layer({"ok": b"1", "../escape": b"2"})
    with pytest.raises(LayerError, match=r"'\.\./escape' contains '\.\.'"):
        extract_layer(io.BytesIO(bad), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "escape").exists()


def test_load_stores_layers_config_and_metadata(store: ImageStore) -> None:
    cfg = config([BASE, TOP])
    image = store.load_layers_and_config(cfg, opener([BASE, TOP]))
    assert image.id == sha(cfg)
    assert (store.root / "configs" / f"{sha(cfg)[7:]}.json").read_bytes() == cfg
    assert image.diff_ids == [sha(BASE), sha(TOP)]
    assert image.chain_ids == chain_ids([sha(BASE), sha(TOP)])
    assert image.layer_dirs == [store.root / "layers" / c[7:] / "diff" for c in image.chain_ids]
    assert (image.layer_dirs[1] / "app" / "main").read_bytes() == b"main program"
    meta = json.loads((image.layer_dirs[1].parent / "meta.json").read_text())
    assert meta == {
        "diff_id": sha(TOP),
        "chain_id": image.chain_ids[1],
        "parent": image.chain_ids[0],
        "size": len(b"main program"),
        "tar_size": len(TOP),
    }
    assert (image.layer_dirs[1].parent / "tar-split.gz").is_file()
    assert image.size == len(b"base\n") + len(b"tool") + len(b"main program")
    assert image.created == "2024-01-01T00:00:00Z"
    assert image.repo_tags == []
    assert contents(store.root / "tmp") == []


def test_existing_layers_are_reused_not_reextracted(store: ImageStore) -> None:
    load(store, [BASE, TOP])
    calls: list[int] = []
    second = store.load_layers_and_config(
        config([BASE, OTHER_TOP]), opener([BASE, OTHER_TOP], calls)
    )
    assert calls == [1]
    assert len(contents(store.root / "layers")) == 3
    # The same diff on another parent is another layer (its chain id differs).
    third = store.load_layers_and_config(config([OTHER_TOP]), opener([OTHER_TOP], calls))
    assert calls == [1, 0]
    assert third.chain_ids[0] != second.chain_ids[1]


def test_concurrent_loads_of_the_same_image(store: ImageStore) -> None:
    images: list[str] = []

    def work() -> None:
        images.append(load(store, [BASE, TOP]))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(images) == 8 and len(set(images)) == 1
    assert len(contents(store.root / "layers")) == 2
    assert contents(store.root / "tmp") == []
    assert (store.get(images[0]).layer_dirs[1] / "app" / "main").is_file()


def test_diff_id_mismatch_stores_nothing(store: ImageStore) -> None:
    cfg = config([BASE, TOP])
    with pytest.raises(LayerError, match=r"layer 2 does not match the image config") as caught:
        store.load_layers_and_config(cfg, opener([BASE, OTHER_TOP]))
    assert sha(TOP) in str(caught.value)
    for sub in ("layers", "configs", "tmp"):
        assert contents(store.root / sub) == []
    assert store.list() == []


def test_bad_config_is_refused(store: ImageStore) -> None:
    with pytest.raises(InvalidImage, match="not valid JSON"):
        store.load_layers_and_config(b"{", opener([]))
    with pytest.raises(InvalidImage, match='rootfs of type "layers"'):
        store.load_layers_and_config(b"{}", opener([]))


def test_crash_leftovers_are_collected_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(root)
    kept = store.load_layers_and_config(config([BASE]), opener([BASE]))
    orphan = root / "layers" / ("0" * 64)
    (orphan / "diff").mkdir(parents=True)
    (root / "tmp" / "layer-half").mkdir()
    ImageStore(root)
    assert contents(root / "layers") == [kept.chain_ids[0][7:]]
    assert contents(root / "tmp") == []


# --- tags and lookup ------------------------------------------------------------------


def test_tag_get_and_persistence(store: ImageStore) -> None:
    image_id = load(store, [BASE])
    assert str(store.tag(image_id, "busybox")) == "docker.io/library/busybox:latest"
    store.tag(image_id, "localhost:5000/x")
    store.tag("busybox", "user/app:1")  # the source may be a name too
    image = store.get("busybox")
    assert image.id == image_id
    assert image.repo_tags == ["busybox:latest", "localhost:5000/x:latest", "user/app:1"]
    for name in ("busybox:latest", "docker.io/library/busybox", "user/app:1", "localhost:5000/x"):
        assert store.get(name).id == image_id
    saved = json.loads((store.root / "repositories.json").read_text())
    assert saved["tags"]["docker.io/user/app:1"] == image_id
    reopened = ImageStore(store.root)
    assert reopened.get("user/app:1").repo_tags == image.repo_tags


def test_lookup_by_id_forms(store: ImageStore) -> None:
    image_id = load(store, [BASE])
    hex_ = image_id[7:]
    for form in (image_id, hex_, hex_[:12], hex_[:4], "sha256:" + hex_[:8]):
        assert store.get(form).id == image_id
    with pytest.raises(ImageNotFound, match=f"No such image: {hex_[:3]}"):
        store.get(hex_[:3])  # too short to be an id


def test_ambiguous_prefix_is_not_found(store: ImageStore) -> None:
    by_prefix: dict[str, bytes] = {}
    for n in range(5000):  # two configs whose ids share 4 hex digits (birthday odds)
        cfg = config([], label=n)
        prefix = sha(cfg)[7:11]
        if prefix in by_prefix:
            break
        by_prefix[prefix] = cfg
    else:
        pytest.fail("no 4-hex collision found")
    first = store.load_layers_and_config(by_prefix[prefix], opener([])).id
    second = store.load_layers_and_config(cfg, opener([])).id
    with pytest.raises(ImageNotFound, match=f"No such image: {prefix}"):
        store.get(prefix)
    assert store.get(first[7:20]).id == first
    assert store.get(second[7:20]).id == second


def test_not_found_messages(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound) as caught:
        store.get("nope")
    assert str(caught.value) == "No such image: nope:latest"  # as dockerd words it
    assert caught.value.status == 404
    with pytest.raises(ImageNotFound, match="No such image: NotAName"):
        store.get("NotAName")
    with pytest.raises(ImageNotFound, match="sha256:" + "0" * 64):
        store.get("sha256:" + "0" * 64)


def test_retag_moves_and_untag(store: ImageStore) -> None:
    old = load(store, [BASE])
    new = load(store, [BASE, TOP])
    store.tag(old, "app")
    store.tag(new, "app")
    assert store.get("app").id == new
    assert store.get(old).repo_tags == []
    assert store.untag("app:latest") == new
    with pytest.raises(ImageNotFound):
        store.get("app")
    with pytest.raises(ImageNotFound, match="No such image: app"):
        store.untag("app")
    assert store.get(new).id == new  # untag alone never deletes


def test_list_is_newest_first(store: ImageStore) -> None:
    older = load(store, [BASE], created="2020-01-01T00:00:00Z")
    newer = load(store, [TOP], created="2025-01-01T00:00:00Z")
    assert [image.id for image in store.list()] == [newer, older]


# --- delete ---------------------------------------------------------------------------


def test_delete_by_name_untags_until_the_last(store: ImageStore) -> None:
    image_id = load(store, [BASE, TOP])
    image = store.get(image_id)
    store.tag(image_id, "app:1")
    store.tag(image_id, "app:2")
    assert store.delete("app:1") == [{"Untagged": "app:1"}]
    assert store.get(image_id).repo_tags == ["app:2"]
    records = store.delete("app:2")
    assert records == [
        {"Untagged": "app:2"},
        {"Deleted": image_id},
        {"Deleted": image.chain_ids[1]},
        {"Deleted": image.chain_ids[0]},
    ]
    assert contents(store.root / "layers") == []
    assert contents(store.root / "configs") == []
    assert contents(store.root / "tmp") == []
    with pytest.raises(ImageNotFound):
        store.get(image_id)


def test_delete_keeps_layers_other_images_use(store: ImageStore) -> None:
    first = store.get(load(store, [BASE, TOP]))
    second = store.get(load(store, [BASE, OTHER_TOP]))
    records = store.delete(first.id[7:19])
    assert records == [{"Deleted": first.id}, {"Deleted": first.chain_ids[1]}]
    assert all(d.is_dir() for d in second.layer_dirs)
    assert not first.layer_dirs[1].exists()


def test_delete_by_id_across_repositories_needs_force(store: ImageStore) -> None:
    image_id = load(store, [BASE])
    store.tag(image_id, "one")
    store.tag(image_id, "two")
    with pytest.raises(ImageInUse, match="must be forced.*referenced in multiple repositories"):
        store.delete(image_id)
    assert store.get(image_id).repo_tags == ["one:latest", "two:latest"]
    records = store.delete(image_id, force=True)
    assert records[:2] == [{"Untagged": "one:latest"}, {"Untagged": "two:latest"}]
    assert {"Deleted": image_id} in records


def test_delete_by_id_with_tags_of_one_repository(store: ImageStore) -> None:
    image_id = load(store, [BASE])
    store.tag(image_id, "app:1")
    store.tag(image_id, "app:2")
    records = store.delete(image_id)
    assert records[:2] == [{"Untagged": "app:1"}, {"Untagged": "app:2"}]
    assert records[2] == {"Deleted": image_id}


def test_delete_in_use(tmp_path: Path) -> None:
    users: dict[str, str] = {}
    store = ImageStore(tmp_path / "s", in_use=users.get)
    image_id = load(store, [BASE])
    store.tag(image_id, "app:1")
    store.tag(image_id, "app:2")
    users[image_id] = "stopped container 0123456789ab"
    with pytest.raises(ImageInUse) as caught:
        store.delete(image_id)
    assert caught.value.status == 409
    assert str(caught.value) == (
        f"conflict: unable to delete {image_id[7:19]} (must be forced) - image is being used "
        "by stopped container 0123456789ab"
    )
    # Another tag remains: untagging one is fine.
    assert store.delete("app:1") == [{"Untagged": "app:1"}]
    with pytest.raises(ImageInUse, match='unable to remove repository reference "app:2"'):
        store.delete("app:2")
    # Forced: untagged, but the layers stay for the container.
    assert store.delete("app:2", force=True) == [{"Untagged": "app:2"}]
    image = store.get(image_id)
    assert image.repo_tags == []
    assert image.layer_dirs[0].is_dir()
    del users[image_id]
    assert store.delete(image_id)[0] == {"Deleted": image_id}


# --- docker load ----------------------------------------------------------------------


def busybox_archive() -> tuple[bytes, str]:
    built = build_container_image(FAKE_BUSYBOX, APPLETS, "1.0", MTIME)
    return built.tarball, built.image_id


def rewrite(
    tarball: bytes,
    drop: set[str] = frozenset(),  # type: ignore[assignment]
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
) -> bytes:
    """A copy of a tar with some members dropped, replaced or added."""
    replace, add = replace or {}, add or {}
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tarball)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            if member.name in drop:
                continue
            data = replace.get(member.name)
            if data is None and member.isreg():
                handle = src.extractfile(member)
                assert handle is not None
                data = handle.read()
            if data is not None:
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def members(tarball: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        for member in tar.getmembers():
            if member.isreg():
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name] = handle.read()
    return out


class Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def check_busybox(store: ImageStore, image_id: str) -> None:
    image = store.get("busybox")
    assert image.id == image_id
    assert image.repo_tags == ["busybox:latest"]
    root = image.layer_dirs[0]
    assert (root / "bin" / "busybox").read_bytes() == FAKE_BUSYBOX
    assert (root / "bin" / "sh").stat().st_ino == (root / "bin" / "busybox").stat().st_ino
    assert (root / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert image.config["config"]["Cmd"] == ["sh"]


def test_load_docker_save_archive(store: ImageStore) -> None:
    tarball, image_id = busybox_archive()
    loaded = load_archive(store, io.BytesIO(tarball))
    assert [(x.image_id, x.tags) for x in loaded] == [(image_id, ["busybox:latest"])]
    assert loaded[0].messages() == ["Loaded image: busybox:latest"]
    check_busybox(store, image_id)
    # Loading again changes nothing and reuses the layer.
    assert load_archive(store, io.BytesIO(tarball))[0].image_id == image_id
    assert len(contents(store.root / "layers")) == 1


def test_load_legacy_only_from_an_unseekable_stream(store: ImageStore, tmp_path: Path) -> None:
    tarball, image_id = busybox_archive()
    legacy = rewrite(tarball, drop={"index.json", "oci-layout"})
    loaded = load_archive(store, Unseekable(legacy))  # type: ignore[arg-type]
    assert loaded[0].tags == ["busybox:latest"]
    check_busybox(store, image_id)
    assert contents(store.root / "tmp") == []


def test_load_old_docker_layout_with_layer_symlinks(store: ImageStore, tmp_path: Path) -> None:
    """Pre-v25 docker wrote <id>/layer.tar and symlinked a repeated layer to the first copy."""
    cfg = config([BASE, TOP, BASE])
    manifest = [
        {
            "Config": f"{sha(cfg)[7:]}.json",
            "RepoTags": ["old:1"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
        }
    ]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in {
            "aaa/layer.tar": BASE,
            "bbb/layer.tar": gzip.compress(TOP),
            f"{sha(cfg)[7:]}.json": cfg,
            "manifest.json": json.dumps(manifest).encode(),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ccc/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../aaa/layer.tar"
        tar.addfile(link)
    path = tmp_path / "old.tar"
    path.write_bytes(out.getvalue())
    loaded = load_archive(store, path)
    assert loaded[0].tags == ["old:1"]
    image = store.get("old:1")
    assert (image.layer_dirs[2] / "etc" / "os-release").read_bytes() == b"base\n"
    assert (image.layer_dirs[1] / "app" / "main").read_bytes() == b"main program"


def test_load_oci_layout_only(store: ImageStore) -> None:
    tarball, image_id = busybox_archive()
    oci = rewrite(tarball, drop={"manifest.json", "repositories"})
    loaded = load_archive(store, io.BytesIO(oci))
    assert loaded[0].tags == ["busybox:latest"]
    check_busybox(store, image_id)


def test_load_oci_without_name_annotation_is_untagged(store: ImageStore) -> None:
    tarball, image_id = busybox_archive()
    files = members(tarball)
    index = json.loads(files["index.json"])
    del index["manifests"][0]["annotations"]["io.containerd.image.name"]  # leaves "latest"
    oci = rewrite(
        tarball,
        drop={"manifest.json", "repositories"},
        replace={"index.json": json.dumps(index).encode()},
    )
    loaded = load_archive(store, io.BytesIO(oci))
    assert loaded[0].messages() == [f"Loaded image ID: {image_id}"]
    assert store.get(image_id).repo_tags == []


def test_load_oci_nested_index_picks_this_platform(store: ImageStore) -> None:
    tarball, image_id = busybox_archive()
    files = members(tarball)
    outer = json.loads(files["index.json"])
    manifest_descriptor = dict(outer["manifests"][0])
    annotations = manifest_descriptor.pop("annotations")
    bogus = {"mediaType": manifest_descriptor["mediaType"], "digest": sha(b"x"), "size": 1}
    nested = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**bogus, "platform": {"os": "linux", "architecture": "s390x"}},
            {**manifest_descriptor, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    nested_bytes = json.dumps(nested).encode()
    outer["manifests"] = [
        {
            "mediaType": nested["mediaType"],
            "digest": sha(nested_bytes),
            "size": len(nested_bytes),
            "annotations": annotations,
        }
    ]
    oci = rewrite(
        tarball,
        drop={"manifest.json", "repositories"},
        replace={"index.json": json.dumps(outer).encode()},
        add={f"blobs/sha256/{sha(nested_bytes)[7:]}": nested_bytes},
    )
    if __import__("platform").machine() != "x86_64":
        pytest.skip("the fixture names amd64")
    assert load_archive(store, io.BytesIO(oci))[0].tags == ["busybox:latest"]
    check_busybox(store, image_id)


def assert_empty(store: ImageStore) -> None:
    for sub in ("layers", "configs", "tmp"):
        assert contents(store.root / sub) == [], sub
    assert store.list() == []
    with pytest.raises(ImageNotFound):
        store.get("busybox")


def test_load_refuses_diff_id_mismatch(store: ImageStore) -> None:
    tarball, _ = busybox_archive()
    files = members(tarball)
    legacy = json.loads(files["manifest.json"])
    cfg = json.loads(files[legacy[0]["Config"]])
    wrong = sha(b"something else")
    cfg["rootfs"]["diff_ids"] = [wrong]
    cfg_bytes = json.dumps(cfg).encode()
    legacy[0]["Config"] = f"blobs/sha256/{sha(cfg_bytes)[7:]}"
    bad = rewrite(
        tarball,
        replace={"manifest.json": json.dumps(legacy).encode()},
        add={legacy[0]["Config"]: cfg_bytes},
    )
    with pytest.raises(LayerError) as caught:
        load_archive(store, io.BytesIO(bad))
    message = str(caught.value)
    assert message.startswith("layer 1 does not match the image config")
    assert wrong in message
    assert_empty(store)


def test_load_refuses_oci_blob_digest_mismatch(store: ImageStore) -> None:
    """The layer matches its DiffID but is filed under a digest it does not have."""
    tarball, _ = busybox_archive()
    files = members(tarball)
    index = json.loads(files["index.json"])
    manifest_path = "blobs/sha256/" + index["manifests"][0]["digest"][7:]
    manifest = json.loads(files[manifest_path])
    real = manifest["layers"][0]["digest"]
    fake = sha(b"not the layer")
    manifest["layers"][0]["digest"] = fake
    manifest_bytes = json.dumps(manifest).encode()
    index["manifests"][0]["digest"] = sha(manifest_bytes)
    oci = rewrite(
        tarball,
        drop={"manifest.json", "repositories"},
        replace={"index.json": json.dumps(index).encode()},
        add={
            f"blobs/sha256/{sha(manifest_bytes)[7:]}": manifest_bytes,
            f"blobs/sha256/{fake[7:]}": files["blobs/sha256/" + real[7:]],
        },
    )
    with pytest.raises(LayerError, match=f"layer 1 .*blob {fake} in the archive is corrupt"):
        load_archive(store, io.BytesIO(oci))
    assert_empty(store)


def test_load_refuses_a_corrupt_manifest_blob(store: ImageStore) -> None:
    tarball, _ = busybox_archive()
    files = members(tarball)
    index = json.loads(files["index.json"])
    manifest_path = "blobs/sha256/" + index["manifests"][0]["digest"][7:]
    oci = rewrite(
        tarball,
        drop={"manifest.json", "repositories"},
        replace={manifest_path: files[manifest_path] + b" "},
    )
    with pytest.raises(ArchiveError, match="is corrupt"):
        load_archive(store, io.BytesIO(oci))
    assert_empty(store)


def test_load_is_all_or_nothing_across_images(store: ImageStore) -> None:
    good_cfg, bad_cfg = config([BASE]), config([TOP])
    manifest = [
        {"Config": "good.json", "RepoTags": ["good:1"], "Layers": ["base.tar"]},
        {"Config": "bad.json", "RepoTags": ["bad:1"], "Layers": ["other.tar"]},
    ]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in {
            "good.json": good_cfg,
            "bad.json": bad_cfg,
            "base.tar": BASE,
            "other.tar": OTHER_TOP,  # not TOP: the DiffID check fails on image 2
            "manifest.json": json.dumps(manifest).encode(),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(LayerError, match="layer 1 does not match"):
        load_archive(store, io.BytesIO(out.getvalue()))
    assert_empty(store)
    with pytest.raises(ImageNotFound):
        store.get("good:1")


def test_load_refuses_non_archives(store: ImageStore) -> None:
    with pytest.raises(ArchiveError, match="neither manifest.json"):
        load_archive(store, io.BytesIO(layer({"hello": b"x"})))
    with pytest.raises(ArchiveError, match="not a valid image archive"):
        load_archive(store, io.BytesIO(b"garbage" * 200))
    tarball, _ = busybox_archive()
    files = members(tarball)
    legacy = json.loads(files["manifest.json"])
    legacy[0]["Layers"] = ["blobs/sha256/" + "0" * 64]
    missing = rewrite(tarball, replace={"manifest.json": json.dumps(legacy).encode()})
    with pytest.raises(ArchiveError, match="lacks 'blobs/sha256/0000"):
        load_archive(store, io.BytesIO(missing))
    assert_empty(store)

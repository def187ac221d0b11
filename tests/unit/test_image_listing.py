"""`docker images` filters, `image prune`, the API's image documents, vmctl's image table."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from agent.api.images import history, image_config, inspect, summary, tag_reference
from agent.errors import BadRequest
from agent.images.filters import (
    LIST_KEYS,
    PRUNE_KEYS,
    ImageFilter,
    parse_filters,
    parse_timestamp,
    path_match,
)
from agent.images.prune import prune_images
from agent.images.store import ImageStore
from vmctl.engine_client import EngineError, json_messages
from vmctl.images_cli import go_json, human_size, image_rows

NOW = 1_800_000_000.0


def layer(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo(name)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def add(
    store: ImageStore, content: bytes, created: str, labels: dict[str, str] | None = None
) -> str:
    data = layer("f", content)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Labels": labels} if labels else {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(data).hexdigest()]},
        "history": [
            {"created": created, "created_by": "base layer"},
            {"created": created, "created_by": "ENV x", "empty_layer": True},
        ],
    }
    raw = json.dumps(config).encode()
    return store.load_layers_and_config(raw, lambda _: io.BytesIO(data)).id


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    store = ImageStore(tmp_path / "store")
    old = add(store, b"old", "2020-01-01T00:00:00Z", {"tier": "base"})
    mid = add(store, b"mid", "2022-01-01T00:00:00.5+02:00", {"tier": "app", "team": "x"})
    add(store, b"new", "2024-01-01T00:00:00Z")  # dangling
    store.tag(old, "busybox:latest")
    store.tag(old, "example.com/team/busybox:1")
    store.tag(mid, "app:1")
    return store


def names(store: ImageStore, filters: dict[str, list[str]]) -> list[list[str]]:
    chosen = ImageFilter(filters, store.get, now=NOW)
    return [chosen.tags(i) for i in store.list() if chosen.matches(i)]


def test_filters_json_in_both_encodings() -> None:
    assert parse_filters('{"dangling":["true"]}', LIST_KEYS) == {"dangling": ["true"]}
    assert parse_filters('{"dangling":{"true":true,"x":false}}', LIST_KEYS) == {
        "dangling": ["true"]
    }
    assert parse_filters("", LIST_KEYS) == {}
    with pytest.raises(BadRequest, match="invalid filter 'status'"):
        parse_filters('{"status":["x"]}', LIST_KEYS)
    with pytest.raises(BadRequest, match="invalid filter 'before'"):
        parse_filters('{"before":["x"]}', PRUNE_KEYS)
    with pytest.raises(BadRequest, match="invalid filter"):
        parse_filters("{not json", LIST_KEYS)


def test_listing_filters(store: ImageStore) -> None:
    assert names(store, {}) == [[], ["app:1"], ["busybox:latest", "example.com/team/busybox:1"]]
    assert names(store, {"dangling": ["true"]}) == [[]]
    assert names(store, {"dangling": ["false"]}) == [
        ["app:1"],
        ["busybox:latest", "example.com/team/busybox:1"],
    ]
    # reference narrows the tags shown, with path.Match's rules ("*" stops at "/")
    assert names(store, {"reference": ["busybox"]}) == [["busybox:latest"]]
    assert names(store, {"reference": ["*/*/busybox:*"]}) == [["example.com/team/busybox:1"]]
    assert names(store, {"reference": ["ap?:[0-9]"]}) == [["app:1"]]
    assert names(store, {"label": ["tier"]}) == [
        ["app:1"],
        ["busybox:latest", "example.com/team/busybox:1"],
    ]
    assert names(store, {"label": ["tier=app", "team=x"]}) == [["app:1"]]
    assert names(store, {"before": ["app:1"]}) == [["busybox:latest", "example.com/team/busybox:1"]]
    assert names(store, {"since": ["app:1"]}) == [[]]
    assert names(store, {"until": ["2021-06-01"]}) == [
        ["busybox:latest", "example.com/team/busybox:1"]
    ]
    with pytest.raises(BadRequest, match='invalid filter "dangling=maybe"'):
        names(store, {"dangling": ["maybe"]})
    with pytest.raises(BadRequest, match="syntax error in pattern"):
        names(store, {"reference": ["[oops"]})


def test_go_path_match_and_timestamps() -> None:
    assert path_match("a*", "abc") and not path_match("a*", "a/b")
    assert path_match("[^b]x", "ax") and not path_match("[^b]x", "bx")
    assert path_match(r"a\*", "a*") and not path_match(r"a\*", "ab")
    assert parse_timestamp("1700000000.5", NOW) == 1_700_000_000.5
    assert parse_timestamp("10m", NOW) == NOW - 600
    assert parse_timestamp("1h30m", NOW) == NOW - 5400
    assert parse_timestamp("2024-01-01T00:00:00Z", NOW) == 1_704_067_200
    assert parse_timestamp("2024-01-01T02:00:00+02:00", NOW) == 1_704_067_200
    with pytest.raises(BadRequest, match="invalid timestamp"):
        parse_timestamp("yesterday", NOW)


def test_prune_dangling_then_all_unused(store: ImageStore) -> None:
    records, reclaimed = prune_images(store, {})
    assert [list(r) for r in records] == [["Deleted"], ["Deleted"]]  # the image, its layer
    assert reclaimed == len(b"new")
    assert len(store.list()) == 2
    store.in_use = lambda image_id: "a container" if image_id == store.resolve("app:1") else None
    records, reclaimed = prune_images(store, {"dangling": ["false"], "label": ["tier"]})
    assert {"Untagged": "busybox:latest"} in records
    assert {"Untagged": "example.com/team/busybox:1"} in records
    assert reclaimed == len(b"old")
    assert [i.repo_tags for i in store.list()] == [["app:1"]]  # in use: kept
    records, _ = prune_images(store, {"dangling": ["false"], "label!": ["tier=app"]})
    assert records == []


def test_image_documents(store: ImageStore) -> None:
    image = store.get("app:1")
    entry = summary(image)
    assert entry == {
        "Containers": -1,
        "Created": 1_640_988_000,
        "Id": image.id,
        "Labels": {"tier": "app", "team": "x"},
        "ParentId": "",
        "RepoDigests": [],
        "RepoTags": ["app:1"],
        "SharedSize": -1,
        "Size": 3,
    }
    assert "VirtualSize" in summary(image, api_version_below_1_44=True)
    document = inspect(image, lambda version: True)
    assert document["Id"] == image.id
    assert document["RootFS"] == {"Type": "layers", "Layers": image.diff_ids}
    assert document["Config"]["Labels"] == {"tier": "app", "team": "x"}
    assert document["Config"]["Cmd"] is None and "Hostname" not in document["Config"]
    assert (document["Os"], document["Architecture"], document["Size"]) == ("linux", "amd64", 3)
    legacy = inspect(image, lambda version: version <= "1.43")
    assert legacy["VirtualSize"] == 3 and legacy["Config"]["Hostname"] == ""
    assert image_config({"Cmd": ["sh"], "Unknown": 1}) == {
        "User": "",
        "Env": None,
        "Cmd": ["sh"],
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
    }
    rows = history(image, store)
    assert [(r["Id"], r["CreatedBy"], r["Size"]) for r in rows] == [
        (image.id, "ENV x", 0),
        ("<missing>", "base layer", 3),
    ]
    assert rows[0]["Tags"] == ["app:1"] and rows[1]["Tags"] is None


def test_tag_references() -> None:
    assert str(tag_reference("docker.io/me/app", "v1")) == "docker.io/me/app:v1"
    assert str(tag_reference("me/app:v2", "")) == "docker.io/me/app:v2"
    assert str(tag_reference("me/app", "")) == "docker.io/me/app:latest"
    for repo, tag in (("", "x"), ("Bad", ""), ("me/app", "bad tag"), ("a@sha256:" + "0" * 64, "")):
        with pytest.raises(BadRequest):
            tag_reference(repo, tag)


# --- vmctl's side -----------------------------------------------------------------------------


def test_vmctl_image_rows_and_sizes() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 4_261_234, 1_234_567_890)] == [
        "0B",
        "999B",
        "1kB",
        "4.26MB",
        "1.23GB",
    ]
    image = {"Id": "sha256:" + "ab" * 32, "Created": NOW - 7200, "Size": 1_983_000}
    rows = image_rows({**image, "RepoTags": ["busybox:latest", "localhost:5000/a/b:v1"]}, NOW)
    assert [(r["Repository"], r["Tag"], r["ID"]) for r in rows] == [
        ("busybox", "latest", "abababababab"),
        ("localhost:5000/a/b", "v1", "abababababab"),
    ]
    assert rows[0]["CreatedSince"] == "2 hours ago" and rows[0]["Size"] == "1.98MB"
    untagged = image_rows({**image, "RepoTags": []}, NOW, truncate=False)
    assert (untagged[0]["Repository"], untagged[0]["ID"]) == ("<none>", image["Id"])
    assert go_json({"a": "<none>&"}) == '{"a":"\\u003cnone\\u003e\\u0026"}'


def test_vmctl_reads_progress_streams() -> None:
    body = b'{"stream":"Loaded image: a:1\\n"}\n{"status":"sha256:x"}\r\n'
    assert json_messages(body) == [{"stream": "Loaded image: a:1\n"}, {"status": "sha256:x"}]
    with pytest.raises(EngineError, match="it broke"):
        json_messages(b'{"stream":"x"}\n{"errorDetail":{"message":"it broke"},"error":"it broke"}')

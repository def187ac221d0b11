"""`docker import`: --change instructions applied to the config, and the imported image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path

import pytest

from agent.errors import AgentError, BadRequest
from agent.images.config_changes import ChangeError, apply_changes, parse_duration
from agent.images.importer import import_tarball, parse_platform
from agent.images.save import SavePlan, select
from agent.images.store import ImageStore


def rootfs(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o755, 1_700_000_000
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


# --- changes ---------------------------------------------------------------------------------


def test_cmd_and_entrypoint_exec_and_shell_forms() -> None:
    assert apply_changes({}, ['CMD ["echo", "hi there"]']) == {"Cmd": ["echo", "hi there"]}
    assert apply_changes({}, ["CMD echo $HOME"]) == {"Cmd": ["/bin/sh", "-c", "echo $HOME"]}
    shell = {"Shell": ["/bin/bash", "-e", "-c"]}
    assert apply_changes(shell, ["cmd make"])["Cmd"] == ["/bin/bash", "-e", "-c", "make"]
    # an entrypoint drops the image's CMD, unless a CMD comes with it
    assert apply_changes({"Cmd": ["sh"]}, ['ENTRYPOINT ["top"]']) == {
        "Cmd": None,
        "Entrypoint": ["top"],
    }
    both = apply_changes({"Cmd": ["sh"]}, ['CMD ["-b"]', 'ENTRYPOINT ["top"]'])
    assert both == {"Cmd": ["-b"], "Entrypoint": ["top"]}
    # not valid JSON: the shell form, as a Dockerfile reads it
    assert apply_changes({}, ["CMD [oops"])["Cmd"] == ["/bin/sh", "-c", "[oops"]


def test_env_forms_quotes_and_expansion() -> None:
    config = apply_changes(
        {"Env": ["PATH=/bin", "KEEP=1"]},
        [
            "ENV A=1 B=\"two words\" C='$literal' D=$PATH:/opt",
            "ENV E ${A:-unset} and ${MISSING:-fallback} ${A:+set}",
            "ENV A=2 SAME_LINE=$A",
            "ENV KEEP=replaced",
        ],
    )
    assert config["Env"] == [
        "PATH=/bin",
        "KEEP=replaced",
        "A=2",
        "B=two words",
        "C=$literal",
        "D=/bin:/opt",
        "E=1 and fallback set",
        "SAME_LINE=1",  # one ENV line expands with the values from before it
    ]


def test_other_instructions() -> None:
    config = apply_changes(
        {"WorkingDir": "/srv", "Env": ["PORT=8080", "DIR=data"]},
        [
            "EXPOSE $PORT 53/udp 7000-7002",
            'LABEL org.example.name=app version="1 0"',
            "USER nobody:nogroup",
            "WORKDIR sub",
            "WORKDIR ../$DIR",
            'VOLUME ["/data", "/logs"]',
            "VOLUME /cache",
            "STOPSIGNAL SIGINT",
            "ONBUILD RUN make",
            "HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD curl -f http://x/",
        ],
    )
    assert config["ExposedPorts"] == {
        p: {} for p in ("8080/tcp", "53/udp", "7000/tcp", "7001/tcp", "7002/tcp")
    }
    assert config["Labels"] == {"org.example.name": "app", "version": "1 0"}
    assert config["User"] == "nobody:nogroup"
    assert config["WorkingDir"] == "/srv/data"
    assert config["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert config["StopSignal"] == "SIGINT"
    assert config["OnBuild"] == ["RUN make"]
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://x/"],
        "Interval": 30_000_000_000,
        "Timeout": 90_000_000_000,
        "Retries": 3,
    }
    assert apply_changes({}, ["HEALTHCHECK NONE"])["Healthcheck"] == {"Test": ["NONE"]}
    exec_check = apply_changes({}, ['HEALTHCHECK CMD ["true"]'])["Healthcheck"]
    assert exec_check == {"Test": ["CMD", "true"]}


def test_changes_are_lines_with_continuations_and_comments() -> None:
    config = apply_changes({}, ["# a comment\nENV A=1 \\\n  B=2\n\nLABEL x=y"])
    assert config == {"Env": ["A=1", "B=2"], "Labels": {"x": "y"}}


def test_the_input_config_is_not_modified() -> None:
    original = {"Env": ["A=1"], "Labels": {"a": "b"}}
    apply_changes(original, ["ENV B=2", "LABEL c=d"])
    assert original == {"Env": ["A=1"], "Labels": {"a": "b"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("RUN make", "RUN is not a valid change command"),
        ("FROM busybox", "FROM is not a valid change command"),
        ("COPY a b", "COPY is not a valid change command"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV ONLYKEY", "ENV must have two arguments"),
        ("ENV =value", "ENV names can not be blank"),
        ('ENV A="unterminated', "matching double-quote"),
        ("EXPOSE 99999", "invalid containerPort: 99999"),
        ("EXPOSE 80/icmp", "invalid containerPort: 80/icmp"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("HEALTHCHECK --interval=soon CMD x", "invalid duration 'soon'"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag: --bogus"),
        ("HEALTHCHECK SOMETIMES x", "unknown type"),
        ("USER", "USER requires exactly one argument"),
        ("CMD", "CMD requires at least one argument"),
    ],
)
def test_bad_changes_are_400s_that_say_why(change: str, message: str) -> None:
    with pytest.raises(ChangeError, match=message) as caught:
        apply_changes({}, [change])
    assert caught.value.status == 400


def test_go_durations() -> None:
    assert parse_duration("1h2m3.5s") == 3_723_500_000_000
    assert parse_duration("250ms") == 250_000_000
    assert parse_duration("0") == 0
    with pytest.raises(ChangeError):
        parse_duration("5 minutes")


# --- the imported image ----------------------------------------------------------------------


def test_platform_strings() -> None:
    assert parse_platform("linux/arm64/v8") == ("linux", "arm64", "v8")
    assert parse_platform("")[0] == "linux"
    with pytest.raises(BadRequest, match="not supported"):
        parse_platform("windows/amd64")
    with pytest.raises(BadRequest, match="invalid platform"):
        parse_platform("linux//x")


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, lzma.compress])
def test_import_makes_a_one_layer_image(tmp_path: Path, compress: object) -> None:
    store = ImageStore(tmp_path / "store")
    tarball = rootfs({"bin/tool": b"#!/bin/sh\necho tool\n", "etc/motd": b"hello\n"})
    body = io.BytesIO(compress(tarball))  # type: ignore[operator]
    image = import_tarball(store, body, ['CMD ["/bin/tool"]', "ENV A=1"], platform="linux/arm64")
    diff_id = "sha256:" + hashlib.sha256(tarball).hexdigest()
    assert image.diff_ids == [diff_id]  # the layer is the uncompressed tarball itself
    config = json.loads(store.config_bytes(image.id))
    assert config["config"] == {"Cmd": ["/bin/tool"], "Env": ["A=1"]}
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert config["comment"] == "Imported from -"
    assert config["history"] == [{"created": config["created"], "comment": "Imported from -"}]
    assert (image.layer_dirs[0] / "etc" / "motd").read_bytes() == b"hello\n"
    out = io.BytesIO()
    SavePlan(store, select(store, [image.id])).write(out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as saved:
        handle = saved.extractfile("blobs/sha256/" + diff_id[7:])
        assert handle is not None and handle.read() == tarball


def test_import_message_and_bad_input(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = import_tarball(store, io.BytesIO(rootfs({"a": b"a"})), [], message="built by hand")
    assert json.loads(store.config_bytes(image.id))["comment"] == "built by hand"
    with pytest.raises(AgentError, match="not a valid tar archive") as caught:
        import_tarball(store, io.BytesIO(b"this is not a tarball" * 50), [])
    assert caught.value.status == 400
    with pytest.raises(ChangeError):
        import_tarball(store, io.BytesIO(rootfs({"b": b"b"})), ["RUN x"])
    assert len(store.list()) == 1
    assert list((store.root / "tmp").iterdir()) == []

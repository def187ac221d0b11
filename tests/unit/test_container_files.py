"""The pieces behind cp, export, diff, top, stats, update and prune, on plain directories
(no root, no containers): path resolution, tar both ways, overlay diffs, filters."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agent.containers import changes, processes, prune, update
from agent.containers.archive import Extractor, TarWriter
from agent.containers.container_tree import (
    GO_DIR,
    GO_SYMLINK,
    ContainerTree,
    MountPoint,
    ReadOnly,
    clean,
    go_file_mode,
    rfc3339,
)
from agent.errors import AgentError, BadRequest, NotFound
from agent.runtime import cgroups
from vmctl import copy_cli


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "etc").mkdir(parents=True)
    (base / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (base / "abs").symlink_to("/etc")  # absolute: means the container's /etc
    (base / "up").symlink_to("../../../../..")
    (base / "loop").symlink_to("loop")
    return base


def test_clean_keeps_paths_absolute_and_single_rooted() -> None:
    assert clean("") == clean(".") == clean("/") == clean("//") == "/"
    assert clean("//data/") == clean("data") == "/data"
    assert clean("a/../../b") == "/b"


def test_resolution_stays_inside_the_root(root: Path) -> None:
    tree = ContainerTree(str(root))
    assert tree.resolve("/abs/passwd") == "/etc/passwd"
    assert tree.resolve("/up/etc/passwd") == "/etc/passwd"
    assert tree.resolve("/up") == "/"
    assert tree.resolve("/up", follow_last=False) == "/up"
    assert tree.host_path(tree.resolve("/up/../../x")) == str(root / "x")
    with pytest.raises(OSError):
        tree.resolve("/loop/x")


def test_mounts_map_their_destinations(root: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "in").symlink_to("/etc")  # a link in a volume is the container's too
    tree = ContainerTree(
        str(root),
        [MountPoint("/data", str(volume), True), MountPoint("/data/ro", str(tmp_path), False)],
    )
    assert tree.host_path("/data/x") == str(volume / "x")
    assert tree.host_path("/data") == str(volume)
    assert tree.host_path("/database") == str(root / "database")
    assert tree.resolve("/data/in/passwd") == "/etc/passwd"
    tree.check_writable("/data/x")
    with pytest.raises(ReadOnly):
        tree.check_writable("/data/ro/x")
    with pytest.raises(ReadOnly):
        ContainerTree(str(root), readonly_root=True).check_writable("/etc/x")


def test_locate_and_stat(root: Path) -> None:
    tree = ContainerTree(str(root), name="c")
    assert tree.locate("etc/passwd") == ("/etc/passwd", "passwd")
    assert tree.locate("/abs") == ("/abs", "abs")  # the last link is not followed
    assert tree.locate("/abs/") == ("/etc", "abs")
    assert tree.locate("/etc/.") == ("/etc", ".")
    assert tree.locate("/") == ("/", "/")
    with pytest.raises(NotFound):
        tree.locate("/nope")
    for bad in ("", "/etc/passwd/x", "/etc/passwd/"):
        with pytest.raises(BadRequest):
            tree.locate(bad)
    link = tree.path_stat("/up", "up")
    assert link["mode"] == GO_SYMLINK | 0o777 and link["linkTarget"] == "/"
    assert int(str(tree.path_stat("/etc", "etc")["mode"])) & GO_DIR


def test_go_modes_and_times() -> None:
    assert go_file_mode(stat.S_IFDIR | 0o755) == GO_DIR | 0o755
    assert go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o755) == (1 << 23) | 0o755
    assert go_file_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666
    assert rfc3339(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def _tar(tree: ContainerTree, cpath: str, name: str) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    writer.add_tree(tree, cpath, name, "/" if name == "/" else name + "/")
    writer.close()
    return out.getvalue()


def test_tar_round_trip_keeps_links_and_hard_links(root: Path, tmp_path: Path) -> None:
    (root / "etc/sub").mkdir()
    os.link(root / "etc/passwd", root / "etc/sub/hard")
    data = _tar(ContainerTree(str(root)), "/etc", "etc")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["etc", "etc/passwd", "etc/sub", "etc/sub/hard"]
    assert members["etc/sub/hard"].islnk() and members["etc/sub/hard"].linkname == "etc/passwd"
    target = tmp_path / "target"
    (target / "dest").mkdir(parents=True)
    Extractor(ContainerTree(str(target)), "/dest", True).extract(io.BytesIO(data))
    copied = target / "dest/etc"
    assert (copied / "passwd").read_text().startswith("root:")
    assert os.stat(copied / "sub/hard").st_ino == os.stat(copied / "passwd").st_ino
    listing = _tar(ContainerTree(str(root)), "/", "/")
    with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
        names = tar.getnames()  # the reader drops a directory's trailing "/": "/" is ""
    assert names[0] == "" and {"/abs", "/etc/passwd"} <= set(names)


def _archive(*entries: tarfile.TarInfo, data: bytes = b"x") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in entries:
            if entry.isreg():
                entry.size = len(data)
                tar.addfile(entry, io.BytesIO(data))
            else:
                tar.addfile(entry)
    buffer.seek(0)
    return buffer


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.linkname = kind, link
    entry.uid, entry.gid = os.getuid(), os.getgid()
    entry.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return entry


def test_extraction_never_leaves_the_tree(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "out").symlink_to(str(outside))  # the host path, as a symlink in the container
    tree = ContainerTree(str(root))
    Extractor(tree, "/", True).extract(_archive(_entry("out/a"), _entry("up/tmp/b")))
    assert not list(outside.iterdir())
    assert (root / str(outside).lstrip("/") / "a").exists()
    assert (root / "tmp/b").exists()
    for bad in (_entry("../x"), _entry("h", tarfile.LNKTYPE, "../../etc/shadow")):
        with pytest.raises(BadRequest, match="outside the destination"):
            Extractor(tree, "/etc", True).extract(_archive(bad))
    with pytest.raises(BadRequest, match="not a valid tar"):
        Extractor(tree, "/", True).extract(io.BytesIO(b"garbage" * 100))


def test_extraction_replaces_but_respects_no_overwrite(root: Path) -> None:
    tree = ContainerTree(str(root))
    with pytest.raises(BadRequest, match="cannot overwrite non-directory"):
        Extractor(tree, "/etc", True).extract(_archive(_entry("passwd", tarfile.DIRTYPE)))
    Extractor(tree, "/etc", False).extract(_archive(_entry("passwd", tarfile.DIRTYPE)))
    assert (root / "etc/passwd").is_dir()
    Extractor(tree, "/", True).extract(_archive(_entry("abs", tarfile.SYMTYPE, "/nowhere")))
    assert os.readlink(root / "abs") == "/nowhere"  # the link itself is replaced


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def test_changes_from_an_upper_dir(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("whiteouts are device nodes: making them needs root")
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for path in ("bin", "usr/sbin", "etc", "tmp"):
        (lower / path).mkdir(parents=True)
    (lower / "bin/ls").write_text("ls")
    (lower / "etc/passwd").write_text("root")
    for path in ("bin", "usr", "etc", "tmp", "proc"):
        (upper / path).mkdir(parents=True)
    _whiteout(upper / "bin/ls")
    (upper / "tmp/x").write_text("new")
    (upper / "etc/hostname").write_text("")  # the agent's mount point: not a change
    (upper / "usr/new").write_text("")
    os.setxattr(upper / "usr", "trusted.overlay.opaque", b"y")
    found = {(c["Path"], c["Kind"]) for c in changes.container_changes(str(upper), [str(lower)])}
    assert found == {
        ("/bin", changes.MODIFIED),
        ("/bin/ls", changes.DELETED),
        ("/tmp", changes.MODIFIED),
        ("/tmp/x", changes.ADDED),
        ("/usr", changes.MODIFIED),
        ("/usr/new", changes.ADDED),
        ("/usr/sbin", changes.DELETED),
    }


def test_lower_view_merges_layers(tmp_path: Path) -> None:
    base, top = tmp_path / "base", tmp_path / "top"
    (base / "d").mkdir(parents=True)
    (base / "d/a").write_text("")
    (base / "d/b").write_text("")
    (top / "d").mkdir(parents=True)
    (top / "d/c").write_text("")
    view = changes.LowerView([str(base), str(top)])
    assert view.listdir("d") == {"a", "b", "c"}
    assert view.lstat("d/a") is not None and view.lstat("d/zz") is None
    (top / "x").write_text("")  # a file where the base has a directory hides it
    (base / "x").mkdir()
    (base / "x/under").write_text("")
    assert view.lstat("x/under") is None


def test_prune_filters() -> None:
    now = 1_700_000_000.0
    assert prune.parse_duration("1h30m") == 5400 and prune.parse_duration("90") is None
    assert prune.parse_until("1h", now) == now - 3600
    assert prune.parse_until("1600000000", now) == 1_600_000_000
    assert prune.parse_until("2023-11-14T22:13:20Z", now) == now
    assert prune.parse_until("2023-11-14T23:13:20+01:00", now) == now
    with pytest.raises(BadRequest, match="failed to parse"):
        prune.parse_until("soon", now)
    with pytest.raises(BadRequest, match="Invalid filter 'status'"):
        prune.selector({"status": ["exited"]}, now)


def test_update_plans() -> None:
    host_config = {"Memory": 0, "MemorySwap": 0, "RestartPolicy": {"Name": "no"}}
    plan = update.plan_update(
        host_config,
        {"Memory": 64 << 20, "NanoCpus": 0, "PidsLimit": None, "RestartPolicy": {"Name": ""}},
    )
    assert (
        plan.host_config["Memory"] == 64 << 20 and plan.host_config["RestartPolicy"]["Name"] == "no"
    )
    assert plan.requested.controllers_needed() == {"memory"}
    policy = update.plan_update(host_config, {"RestartPolicy": {"Name": "always"}})
    assert policy.host_config["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert not policy.requested.controllers_needed()
    lifted = update.plan_update({"PidsLimit": 10}, {"PidsLimit": 0})
    assert lifted.host_config["PidsLimit"] == 0
    for body, message in (
        ({"Memory": 1}, "Minimum memory limit"),
        ({"RestartPolicy": {"Name": "maybe"}}, "invalid restart policy"),
        ({"Devices": [{"PathOnHost": "/dev/x"}]}, "not supported"),
        ([], "JSON object"),
    ):
        with pytest.raises(AgentError, match=message):
            update.plan_update(host_config, body)
    with pytest.raises(BadRequest, match="AutoRemove"):
        update.plan_update({"AutoRemove": True}, {"RestartPolicy": {"Name": "always"}})
    with pytest.raises(BadRequest, match="memoryswap"):
        update.plan_update({"Memory": 8 << 20, "MemorySwap": 16 << 20}, {"Memory": 32 << 20})


def test_update_writes_the_cgroup_files(tmp_path: Path) -> None:
    for name in ("memory.max", "memory.low", "cpu.max", "pids.max"):
        (tmp_path / name).write_text("max\n")
    plan = update.plan_update({}, {"Memory": 64 << 20, "NanoCpus": 500_000_000, "PidsLimit": 9})
    cgroup = cgroups.Cgroup(tmp_path)
    cgroup.apply(plan.resources)
    assert (tmp_path / "memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "cpu.max").read_text() == "50000 100000"
    assert (tmp_path / "pids.max").read_text() == "9"
    swap = update.plan_update({"Memory": 64 << 20}, {"MemorySwap": 128 << 20})
    assert update.warnings_for(swap.resources, cgroup)  # no memory.swap.max here


def test_update_refuses_what_the_host_cannot_enforce(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    (tmp_path / "vmctl").mkdir()
    (tmp_path / "vmctl/cgroup.subtree_control").write_text("cpu pids\n")
    hierarchy = cgroups.Hierarchy(tmp_path)
    plan = update.plan_update({}, {"Memory": 64 << 20, "CpuShares": 512})
    with pytest.raises(BadRequest, match="--memory: this host's cgroup v2 hierarchy has no memory"):
        update.check_controllers(plan.requested, hierarchy)
    update.check_controllers(update.plan_update({}, {"CpuShares": 512}).requested, hierarchy)


def test_parse_ps_keeps_the_containers_lines() -> None:
    output = "  PID TTY      STAT   TIME COMMAND\n    1 ?        Ss     0:01 /sbin/init splash\n"
    output += "   42 pts/0    S+     0:00 sleep 1000\n"
    assert processes.parse_ps(output, [42]) == {
        "Titles": ["PID", "TTY", "STAT", "TIME", "COMMAND"],
        "Processes": [["42", "pts/0", "S+", "0:00", "sleep 1000"]],
    }
    with pytest.raises(BadRequest, match="PID"):
        processes.parse_ps("COMMAND\nsleep\n", [1])


def test_ps_ef_of_this_process() -> None:
    result = processes.ps_ef([os.getpid()])
    (row,) = result["Processes"]  # type: ignore[misc]
    assert row[1] == str(os.getpid()) and row[2] == str(os.getppid())
    assert "python" in row[7] or "pytest" in row[7]


def test_vmctl_cp_rules() -> None:
    assert copy_cli.split_target("web:/etc/hosts") == ("web", "/etc/hosts")
    assert copy_cli.split_target("./a:b") == (None, "./a:b")
    assert copy_cli.split_target("/abs:x") == (None, "/abs:x")
    assert copy_cli.split_target("plain") == (None, "plain")
    assert copy_cli.rebase("etc/passwd", "etc", "copy") == "copy/passwd"
    assert copy_cli.rebase("./x", ".", "dest") == "dest/x"
    assert copy_cli.rebase("/bin/sh", "/", "rootfs") == "rootfs/bin/sh"
    assert copy_cli.rebase("passwd", "passwd", "pw") == "pw"


def test_vmctl_stats_row_matches_the_docker_cli_math() -> None:
    doc = {
        "id": "0123456789abcdef",
        "name": "/web",
        "cpu_stats": {
            "cpu_usage": {"total_usage": 300},
            "system_cpu_usage": 2000,
            "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "memory_stats": {"usage": 3 << 20, "limit": 100 << 20, "stats": {"inactive_file": 1 << 20}},
        "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 20}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 4096}]},
        "pids_stats": {"current": 3},
    }
    row = copy_cli.stats_row(doc)
    assert row["CPUPerc"] == "40.00%" and row["MemUsage"] == "2MiB / 100MiB"
    assert (row["MemPerc"], row["NetIO"], row["BlockIO"]) == (
        "2.00%",
        "1.5kB / 20B",
        "4.096kB / 0B",
    )
    assert (row["ID"], row["Name"], row["PIDs"]) == ("0123456789ab", "web", "3")

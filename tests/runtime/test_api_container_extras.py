"""top, stats, diff, export, cp, rename, update and prune, with the real docker CLI (and
`vmctl cp`/`top`/`stats`) against the agent running natively on this host (root)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.runtime import cgroups
from tests.docker_suite import DOCKER, DockerCLI
from tests.runtime.conftest import NativeAgent, mounts_under
from vmctl.engine_client import EngineError

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)

GO_DIR, GO_SYMLINK = 1 << 31, 1 << 27


def sleeper(dk: DockerCLI, role: str, *options: str) -> str:
    name = dk.name(role)
    dk.ok("run", "-d", "--name", name, *options, "busybox", "sleep", "1000")
    return name


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


# -- top and stats -------------------------------------------------------------------------


def test_top_lists_the_containers_processes(dk: DockerCLI) -> None:
    name = sleeper(dk, "top")
    dk.ok("exec", "-d", name, "sh", "-c", "sleep 999")
    lines = dk.ok("top", name).splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    commands = sorted(line.split(None, 7)[7] for line in lines[1:])
    assert commands == ["sleep 1000", "sleep 999"], lines
    init_pid = dk.inspect(name)["State"]["Pid"]
    assert str(init_pid) in [line.split()[1] for line in lines[1:]]
    # other ps arguments: the host's ps, filtered to the container
    custom = dk.ok("top", name, "-o", "pid,comm").splitlines()
    assert custom[0].split() == ["PID", "COMMAND"]
    assert sorted(line.split()[1] for line in custom[1:]) == ["sleep", "sleep"]
    bad = dk("top", name, "-o", "comm")
    assert bad.returncode != 0 and "PID" in bad.stderr
    dk.ok("stop", "-t", "0", name)
    stopped = dk("top", name)
    assert stopped.returncode != 0 and "is not running" in stopped.stderr


def test_stats_no_stream_and_json(dk: DockerCLI, agent: NativeAgent) -> None:
    name = sleeper(dk, "stats")
    table = dk.ok("stats", "--no-stream", name).splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert name in table[1]
    row = json.loads(dk.ok("stats", "--no-stream", "--format", "json", name))
    assert row["Name"] == name and row["PIDs"] == "1"
    used, limit = row["MemUsage"].split(" / ")
    assert used != "0B" and limit != "0B", row  # the process's memory, without a controller
    assert row["CPUPerc"].endswith("%") and row["NetIO"] and row["BlockIO"]
    doc = agent.client.container_stats(name)
    assert doc["name"] == "/" + name and doc["id"] == dk.inspect(name)["Id"]
    assert doc["preread"] != "0001-01-01T00:00:00Z" and doc["read"] > doc["preread"]
    cpu = doc["cpu_stats"]
    assert cpu["online_cpus"] >= 1 and cpu["system_cpu_usage"] > 0
    assert cpu["system_cpu_usage"] >= doc["precpu_stats"]["system_cpu_usage"]
    assert doc["memory_stats"]["usage"] > 0 and "inactive_file" in doc["memory_stats"]["stats"]
    assert doc["pids_stats"]["current"] == 1
    assert isinstance(doc["blkio_stats"]["io_service_bytes_recursive"], list)
    if dk.inspect(name)["NetworkSettings"]["IPAddress"]:  # on the default bridge
        assert doc["networks"]["eth0"]["rx_packets"] >= 0
        assert set(doc["networks"]["eth0"]) >= {"rx_bytes", "tx_bytes", "rx_dropped"}
    dk.ok("stop", "-t", "0", name)
    zero = agent.client.container_stats(name)
    assert (
        zero["read"] == "0001-01-01T00:00:00Z"
        and zero["cpu_stats"]["cpu_usage"]["total_usage"] == 0
    )
    assert zero["memory_stats"]["usage"] == 0 and zero["pids_stats"]["current"] == 0
    assert json.loads(dk.ok("stats", "--no-stream", "--format", "json", name))["PIDs"] == "0"


def test_stats_stream_sends_a_document_a_second(dk: DockerCLI, agent: NativeAgent) -> None:
    name = sleeper(dk, "statstream")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(agent.socket))
        sock.sendall(f"GET /v1.50/containers/{name}/stats HTTP/1.1\r\nHost: d\r\n\r\n".encode())
        data = b""
        while data.count(b'"read"') < 3:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert b"Transfer-Encoding: chunked" in data.split(b"\r\n\r\n")[0]
    documents = [json.loads(line) for line in data.split(b"\r\n") if line.startswith(b'{"read"')]
    first, second = documents[0], documents[1]
    assert first["preread"] == "0001-01-01T00:00:00Z"
    assert second["preread"] == first["read"] and second["read"] > first["read"]
    assert second["precpu_stats"] == first["cpu_stats"]


# -- diff and export -----------------------------------------------------------------------


def test_diff_reports_added_changed_and_deleted(dk: DockerCLI) -> None:
    name = sleeper(dk, "diff")
    assert dk.ok("diff", name) == ""  # the agent's own mount points are not changes
    script = (
        "echo hi > /tmp/x; rm /bin/ls; echo > /etc/motd; rm -rf /usr; mkdir /usr; touch /usr/new"
    )
    dk.ok("exec", name, "sh", "-c", script)
    lines = set(dk.ok("diff", name).splitlines())
    assert {"C /tmp", "A /tmp/x", "C /bin", "D /bin/ls", "A /etc/motd", "C /etc"} <= lines
    # an opaque directory: the image's entries in it are gone, the new one added
    assert {"C /usr", "A /usr/new", "D /usr/sbin"} <= lines, lines
    dk.ok("stop", "-t", "0", name)
    assert set(dk.ok("diff", name).splitlines()) == lines


def test_export_running_and_stopped(dk: DockerCLI, agent: NativeAgent) -> None:
    name = sleeper(dk, "export", "-v", "/vol")
    dk.ok("exec", name, "sh", "-c", "echo mine > /made-here; echo v > /vol/in-volume")
    names = tar_names(dk.raw("export", name))
    assert {"bin/sh", "etc/passwd", "made-here"} <= set(names)
    assert "vol/in-volume" not in names  # volumes are not part of the root filesystem
    dk.ok("stop", "-t", "0", name)
    with tarfile.open(fileobj=io.BytesIO(dk.raw("export", name))) as tar:
        member = tar.extractfile("made-here")
        assert member is not None and member.read() == b"mine\n"
    merged = dk.inspect(name)["GraphDriver"]["Data"]["MergedDir"]
    assert not [m for m in mounts_under(agent.root) if m == merged], "export left its mount"


# -- cp ------------------------------------------------------------------------------------


def test_cp_out_of_a_container(dk: DockerCLI, tmp_path: Path) -> None:
    name = sleeper(dk, "cpout")
    dk.ok(
        "exec", name, "sh", "-c", "mkdir -p /d/sub && echo y > /d/sub/y && ln -s /etc/passwd /d/l"
    )
    dk.ok("cp", f"{name}:/etc/passwd", str(tmp_path / "pw"))
    assert (tmp_path / "pw").read_text().startswith("root:x:0:0:")
    dk.ok("cp", f"{name}:/d", str(tmp_path / "d"))
    assert (tmp_path / "d/sub/y").read_text() == "y\n"
    assert os.readlink(tmp_path / "d/l") == "/etc/passwd"  # links are copied as links
    (tmp_path / "into").mkdir()
    dk.ok("cp", f"{name}:/d/.", str(tmp_path / "into"))
    assert sorted(os.listdir(tmp_path / "into")) == ["l", "sub"]
    dk.ok("cp", "-L", f"{name}:/d/l", str(tmp_path / "followed"))
    assert (tmp_path / "followed").read_text().startswith("root:")
    assert tar_names(dk.raw("cp", f"{name}:/d/sub", "-")) == ["sub", "sub/y"]
    missing = dk("cp", f"{name}:/nope", str(tmp_path))
    assert missing.returncode != 0 and "Could not find the file /nope" in missing.stderr


def test_cp_into_a_container_and_its_volume(dk: DockerCLI, tmp_path: Path) -> None:
    volume = dk.name("vol")
    dk.volumes.append(volume)
    name = sleeper(dk, "cpin", "-v", f"{volume}:/data")
    (tmp_path / "f").write_text("file\n")
    (tmp_path / "tree/sub").mkdir(parents=True)
    (tmp_path / "tree/sub/g").write_text("g\n")
    dk.ok("cp", str(tmp_path / "f"), f"{name}:/tmp/renamed")
    dk.ok("cp", str(tmp_path / "tree"), f"{name}:/tmp/")
    dk.ok("cp", str(tmp_path / "f"), f"{name}:/data/")
    out = dk.ok("exec", name, "sh", "-c", "cat /tmp/renamed /tmp/tree/sub/g /data/f")
    assert out == "file\ng\nfile\n"
    # a stopped container: its root and its volume, as a start will show them
    dk.ok("stop", "-t", "0", name)
    dk.ok("cp", str(tmp_path / "f"), f"{name}:/data/while-stopped")
    dk.ok("cp", str(tmp_path / "f"), f"{name}:/root/while-stopped")
    assert dk.raw("cp", f"{name}:/data/while-stopped", "-").count(b"file\n") == 1
    other = dk.ok("run", "--rm", "-v", f"{volume}:/v", "busybox", "ls", "/v")
    assert other.split() == ["f", "while-stopped"]
    dk.ok("start", name)
    assert dk.ok("exec", name, "cat", "/root/while-stopped") == "file\n"
    refused = dk("cp", str(tmp_path / "tree"), f"{name}:/etc/passwd")
    assert refused.returncode != 0 and "cannot copy directory" in refused.stderr


def test_cp_never_escapes_the_container(dk: DockerCLI, agent: NativeAgent, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name = sleeper(dk, "escape")
    links = f"ln -s {outside} /abs; ln -s ../../../../.. /up; mkdir -p {outside}"
    dk.ok("exec", name, "sh", "-c", links)
    (tmp_path / "f").write_text("payload\n")
    for running in (True, False):
        dk.ok("cp", str(tmp_path / "f"), f"{name}:/abs/through-abs")
        dk.ok("cp", str(tmp_path / "f"), f"{name}:/up{outside}/through-up")
        assert not list(outside.iterdir()), "a copy went through a symlink out of the container"
        if running:
            dk.ok("stop", "-t", "0", name)
    dk.ok("start", name)
    inside = dk.ok("exec", name, "ls", str(outside)).split()
    assert inside == ["through-abs", "through-up"]
    # reading through the link stays inside too: the container's /etc/hostname
    hostname = dk.raw("cp", f"{name}:/up/etc/hostname", "-")
    assert dk.inspect(name)["Config"]["Hostname"].encode() in hostname
    # the stat header: Go file modes, and a link's target resolved inside the root
    stat = agent.client.stat_path(name, "/up")
    assert stat["mode"] & GO_SYMLINK and stat["linkTarget"] == "/"
    assert agent.client.stat_path(name, "/etc")["mode"] & GO_DIR
    with pytest.raises(EngineError) as empty:
        agent.client.stat_path(name, "")
    assert empty.value.status == 400
    with pytest.raises(EngineError) as through_file:
        agent.client.stat_path(name, "/etc/passwd/x")
    assert through_file.value.status == 400


def test_cp_refuses_a_tar_that_climbs_out(dk: DockerCLI, tmp_path: Path) -> None:
    name = sleeper(dk, "climb")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        entry = tarfile.TarInfo("../../escaped")
        entry.size = 1
        tar.addfile(entry, io.BytesIO(b"x"))
    proc = subprocess.run(
        [DOCKER, "cp", "-", f"{name}:/tmp"],
        input=buffer.getvalue(),
        capture_output=True,
        env=dk.env,
        timeout=60,
    )
    assert proc.returncode != 0 and b"outside the destination" in proc.stderr
    assert dk("exec", name, "ls", "/escaped").returncode != 0


# -- rename, update, prune -----------------------------------------------------------------


def test_rename(dk: DockerCLI) -> None:
    old, new, taken = dk.name("old"), dk.name("new"), sleeper(dk, "taken")
    dk.ok("create", "--name", old, "busybox", "true")
    dk.ok("rename", old, new)
    assert dk.inspect(new)["Name"] == "/" + new
    assert dk("inspect", old).returncode != 0
    clash = dk("rename", new, taken)
    assert clash.returncode != 0 and "is already in use" in clash.stderr
    bad = dk("rename", new, "no spaces")
    assert bad.returncode != 0 and "Invalid container name" in bad.stderr


def _controllers() -> set[str]:
    """What the agent's container cgroups can use (the agent's parent is "vmctl")."""
    mount = cgroups.find_unified_mount()
    if mount is None:
        return set()
    try:
        return set((mount / "vmctl" / "cgroup.subtree_control").read_text().split())
    except OSError:
        return set()


def test_update_restart_policy_and_limits(dk: DockerCLI) -> None:
    name = sleeper(dk, "update")
    dk.ok("update", "--restart", "on-failure:2", name)
    policy = dk.inspect(name)["HostConfig"]["RestartPolicy"]
    assert (policy["Name"], policy["MaximumRetryCount"]) == ("on-failure", 2)
    low = dk("update", "--memory", "1m", name)
    assert low.returncode != 0 and "Minimum memory limit allowed is 6MB" in low.stderr
    wrong = dk("update", "--restart", "sometimes", name)
    assert wrong.returncode != 0 and "invalid restart policy" in wrong.stderr
    limits = dk("update", "--memory", "64m", "--cpus", "0.5", name)
    host_config = dk.inspect(name)["HostConfig"]
    if {"memory", "cpu"} <= _controllers():
        assert limits.returncode == 0, limits.stderr
        assert (host_config["Memory"], host_config["NanoCpus"]) == (64 << 20, 500_000_000)
        mount = cgroups.find_unified_mount()
        assert mount is not None
        cgroup = mount / "vmctl" / dk.inspect(name)["Id"]
        assert (cgroup / "memory.max").read_text().strip() == str(64 << 20)
        assert (cgroup / "cpu.max").read_text().split() == ["50000", "100000"]
    else:  # this host's cgroup v2 has no such controllers: refused, nothing half-done
        assert limits.returncode != 0 and "controller" in limits.stderr, limits.stderr
        assert (host_config.get("Memory") or 0, host_config.get("NanoCpus") or 0) == (0, 0)
        assert host_config["RestartPolicy"]["Name"] == "on-failure"


def test_container_prune(dk: DockerCLI) -> None:
    keep, gone, up = dk.name("keep"), dk.name("gone"), sleeper(dk, "up")
    dk.ok("create", "--name", keep, "--label", "keep=yes", "busybox", "true")
    dk.ok("run", "--name", gone, "busybox", "sh", "-c", "echo data > /written")
    gone_id = dk.inspect(gone)["Id"]
    out = dk.ok("container", "prune", "-f", "--filter", "label!=keep")
    assert gone_id in out and "Total reclaimed space" in out
    names = dk.ok("ps", "-a", "--format", "{{.Names}}").split()
    assert keep in names and up in names and gone not in names
    assert dk.ok("container", "prune", "-f", "--filter", "until=1h").count("\n") <= 1
    assert keep in dk.ok("ps", "-a", "--format", "{{.Names}}").split()
    bad = dk("container", "prune", "-f", "--filter", "until=whenever")
    assert bad.returncode != 0 and "failed to parse" in bad.stderr


# -- vmctl ---------------------------------------------------------------------------------


def test_vmctl_cp_top_and_stats(agent: NativeAgent, dk: DockerCLI, tmp_path: Path) -> None:
    name = sleeper(dk, "vmctl")
    (tmp_path / "up").mkdir()
    (tmp_path / "up/a").write_text("alpha\n")
    agent.vmctl("cp", str(tmp_path / "up"), f"{name}:/tmp/", check=True)
    agent.vmctl("cp", str(tmp_path / "up/a"), f"{name}:/tmp/b", check=True)
    assert dk.ok("exec", name, "cat", "/tmp/up/a", "/tmp/b") == "alpha\nalpha\n"
    agent.vmctl("cp", f"{name}:/tmp/up", str(tmp_path / "back"), check=True)
    assert (tmp_path / "back/a").read_text() == "alpha\n"
    agent.vmctl("cp", f"{name}:/etc/hostname", str(tmp_path), check=True)
    assert (tmp_path / "hostname").read_text().strip() == dk.inspect(name)["Config"]["Hostname"]
    missing = agent.vmctl("cp", f"{name}:/nope", str(tmp_path))
    assert missing.returncode == 1 and "Could not find the file /nope" in missing.stderr
    both = agent.vmctl("cp", str(tmp_path), str(tmp_path))
    assert both.returncode != 0 and "exactly one side" in both.stderr
    top = agent.vmctl("top", name, check=True).stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"] and top[1].endswith("sleep 1000")
    stats = agent.vmctl("stats", "--no-stream", "--format", "json", name, check=True)
    row = json.loads(stats.stdout)
    assert row["Name"] == name and row["PIDs"] == "1"

"""Volumes, the built-in networks, `docker info`, `docker system df` and `docker events`
against the agent running natively on this host (root), through the real docker CLI."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest

from agent import __version__ as AGENT_VERSION
from tests.docker_suite import DOCKER, DockerCLI, sdk_client, wait_until
from tests.runtime.conftest import NativeAgent

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)


def volume_name(dk: DockerCLI, role: str) -> str:
    name = f"t-{role}-{uuid.uuid4().hex[:8]}"
    dk.volumes.append(name)
    return name


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- volumes ----------------------------------------------------------------------------------


def test_volume_create_ls_inspect_rm(dk: DockerCLI, agent: NativeAgent) -> None:
    name = volume_name(dk, "vol")
    assert dk.ok("volume", "create", "--label", "suite=system", name).strip() == name
    assert dk.ok("volume", "create", name).strip() == name  # the same name again: no error
    listed = dk.ok("volume", "ls", "-q", "--filter", "label=suite=system").split()
    assert name in listed
    assert name not in dk.ok("volume", "ls", "-q", "--filter", "label=suite=other").split()
    assert name in dk.ok("volume", "ls", "-q", "--filter", f"name={name[2:10]}").split()
    [info] = json.loads(dk.ok("volume", "inspect", name))
    assert info["Name"] == name and info["Driver"] == "local" and info["Scope"] == "local"
    assert info["Labels"] == {"suite": "system"}
    assert info["Mountpoint"] == f"{agent.root}/volumes/{name}/_data"
    assert os.path.isdir(info["Mountpoint"]) and info["CreatedAt"]

    bad = dk("volume", "create", "-o", "colour=red", volume_name(dk, "bad"))
    assert bad.returncode == 1 and 'invalid option: "colour"' in bad.stderr
    other = dk("volume", "create", "-d", "nfs", volume_name(dk, "nfs"))
    assert other.returncode == 1 and "only 'local'" in other.stderr
    tmpfs = dk("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "tmpfsvol")
    assert tmpfs.returncode == 1 and "not yet" in tmpfs.stderr

    assert dk.ok("volume", "rm", name).strip() == name
    assert not os.path.exists(info["Mountpoint"])
    missing = dk("volume", "inspect", name)
    assert missing.returncode == 1 and "no such volume" in missing.stderr.lower()
    assert dk("volume", "rm", name).returncode == 1
    assert dk("volume", "rm", "-f", name).returncode == 0  # force: a missing volume is fine


def test_named_volume_outlives_its_containers(dk: DockerCLI) -> None:
    name = volume_name(dk, "data")
    dk.ok("run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    out = dk.ok("run", "--rm", "-v", f"{name}:/data:ro", "busybox", "cat", "/data/f")
    assert out == "kept\n"


def test_a_volume_in_use_cannot_be_removed(dk: DockerCLI) -> None:
    name = volume_name(dk, "busy")
    dk.ok("volume", "create", name)
    holder = dk.name("holder")
    dk.ok("create", "--name", holder, "-v", f"{name}:/data", "busybox", "true")
    refused = dk("volume", "rm", name)  # never started: its create body names the volume
    assert refused.returncode == 1 and "in use" in refused.stderr
    dk.ok("start", holder)
    dk.ok("wait", holder)
    assert "in use" in dk("volume", "rm", "-f", name).stderr  # force does not override use
    assert name not in dk.ok("volume", "ls", "-q", "--filter", "dangling=true").split()
    assert name in dk.ok("volume", "ls", "-q", "--filter", "dangling=false").split()
    dk.ok("rm", holder)
    assert dk.ok("volume", "rm", name).strip() == name


def test_bind_backed_volume_uses_the_directory(dk: DockerCLI, tmp_path: Any) -> None:
    name = volume_name(dk, "bind")
    opts = ["-o", "type=none", "-o", "o=bind", "-o", f"device={tmp_path}"]
    dk.ok("volume", "create", *opts, name)
    dk.ok("run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c", "echo via > /data/x")
    assert (tmp_path / "x").read_text() == "via\n"
    dk.ok("volume", "rm", name)
    assert (tmp_path / "x").exists()  # removing the volume leaves the directory alone


def test_prune_takes_anonymous_volumes_unless_all(dk: DockerCLI) -> None:
    label = f"prune={uuid.uuid4().hex[:8]}"
    named = volume_name(dk, "named")
    dk.ok("volume", "create", "--label", label, named)
    user = dk.name("anon")
    dk.ok("run", "--name", user, "-v", "/scratch", "busybox", "sh", "-c", "echo x > /scratch/f")
    [anonymous] = [m["Name"] for m in dk.inspect(user)["Mounts"] if m["Type"] == "volume"]
    dk.volumes.append(anonymous)
    kept = dk.ok("volume", "prune", "-f")
    assert anonymous not in kept  # its container still exists
    dk.ok("rm", user)
    pruned = dk.ok("volume", "prune", "-f")
    assert anonymous in pruned and named not in pruned
    assert "Total reclaimed space: 2B" in pruned
    # API 1.41 clients expect every unused volume to go (the filter keeps this test's own)
    old = DockerCLI(dk.socket, {**dk.env, "DOCKER_API_VERSION": "1.41"})
    assert named in old.ok("volume", "prune", "-f", "--filter", f"label={label}")
    assert dk("volume", "inspect", named).returncode == 1
    again = volume_name(dk, "again")
    dk.ok("volume", "create", "--label", label, again)
    assert again not in dk.ok("volume", "prune", "-f", "--filter", f"label!={label}")
    assert again in dk.ok("volume", "prune", "-af", "--filter", f"label={label}")


# --- networks ---------------------------------------------------------------------------------


def test_network_ls_and_inspect_the_bridge(dk: DockerCLI) -> None:
    if shutil.which("nft") is None:
        pytest.skip("no default bridge on this host (nft missing)")
    rows = dk.ok("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}").split("\n")
    assert {"bridge bridge local", "host host local", "none null local"} <= set(rows)
    name = dk.name("net")
    dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
    endpoint = dk.inspect(name)["NetworkSettings"]["Networks"]["bridge"]
    [bridge] = json.loads(dk.ok("network", "inspect", "bridge"))
    assert bridge["Driver"] == "bridge" and bridge["Scope"] == "local"
    [config] = bridge["IPAM"]["Config"]
    assert config == {"Subnet": "172.17.0.0/16", "Gateway": endpoint["Gateway"]}
    member = bridge["Containers"][dk.inspect(name)["Id"]]
    assert member["Name"] == name
    assert member["IPv4Address"] == f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}"
    assert member["MacAddress"] == endpoint["MacAddress"]
    by_id = json.loads(dk.ok("network", "inspect", bridge["Id"][:12]))
    assert by_id[0]["Name"] == "bridge"
    host, none = json.loads(dk.ok("network", "inspect", "host", "none"))
    assert (host["Driver"], none["Driver"]) == ("host", "null")
    assert dk.ok("network", "ls", "-q", "--filter", "driver=null").split() == [none["Id"][:12]]
    assert dk.ok("network", "ls", "-q", "--filter", "type=custom").split() == []


def test_unsupported_networks_are_refused_clearly(dk: DockerCLI) -> None:
    created = dk("network", "create", "--driver", "overlay", "mine")
    assert created.returncode == 1 and "only bridge" in created.stderr
    removed = dk("network", "rm", "bridge")
    assert removed.returncode == 1 and "pre-defined" in removed.stderr
    missing = dk("network", "inspect", "mine")
    assert missing.returncode == 1 and "not found" in missing.stderr


# --- info and df ------------------------------------------------------------------------------


def test_docker_info(dk: DockerCLI, agent: NativeAgent) -> None:
    name = dk.name("info")
    dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
    shown = dk("info")
    assert shown.returncode == 0, shown.stderr
    assert "ERROR" not in shown.stderr and "error" not in shown.stdout.lower()
    assert "Storage Driver: overlay2" in shown.stdout
    assert f"Docker Root Dir: {agent.root}" in shown.stdout
    info = json.loads(dk.ok("info", "--format", "{{json .}}"))
    everything = dk.ok("ps", "-aq").split()
    running = dk.ok("ps", "-q").split()
    assert info["Containers"] == len(everything) and info["ContainersRunning"] == len(running)
    assert info["ContainersRunning"] >= 1
    assert info["ContainersStopped"] + info["ContainersPaused"] + len(running) == len(everything)
    configs = os.listdir(f"{agent.root}/images/configs")
    assert info["Images"] == len([c for c in configs if c.endswith(".json")]) >= 1
    assert (info["Driver"], info["CgroupDriver"], info["CgroupVersion"]) == (
        "overlay2",
        "cgroupfs",
        "2",
    )
    assert info["OSType"] == "linux" and info["Architecture"] == os.uname().machine
    assert info["NCPU"] == len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])
    assert info["MemTotal"] == mem_kib * 1024
    assert info["KernelVersion"] == os.uname().release
    assert info["ServerVersion"] == AGENT_VERSION
    assert info["Runtimes"] and info["DefaultRuntime"] in info["Runtimes"]
    assert "name=seccomp,profile=builtin" in info["SecurityOptions"]
    assert info["DockerRootDir"] == agent.root and info["ID"]


def test_system_df(dk: DockerCLI) -> None:
    volume = volume_name(dk, "df")
    name = dk.name("df")
    script = "head -c 300000 /dev/zero > /big; head -c 50000 /dev/zero > /data/half"
    dk.ok("run", "--name", name, "-v", f"{volume}:/data", "busybox", "sh", "-c", script)
    table = dk.ok("system", "df")
    for kind in ("Images", "Containers", "Local Volumes", "Build Cache"):
        assert kind in table
    verbose = dk.ok("system", "df", "-v")
    assert volume in verbose and name in verbose and "busybox" in verbose
    usage = sdk_client(dk).df()
    [mine] = [c for c in usage["Containers"] if c["Names"] == [f"/{name}"]]
    assert 300000 <= mine["SizeRw"] < 400000
    assert mine["SizeRootFs"] > mine["SizeRw"]
    [vol] = [v for v in usage["Volumes"] if v["Name"] == volume]
    assert vol["UsageData"] == {"Size": 50000, "RefCount": 1}
    [image] = [i for i in usage["Images"] if "busybox:latest" in i["RepoTags"]]
    assert image["Size"] > 0 and image["Containers"] >= 1
    assert usage["LayersSize"] >= image["Size"]
    assert usage["BuildCache"] == []


# --- events -----------------------------------------------------------------------------------


def test_events_since_until_replays_the_backlog(dk: DockerCLI) -> None:
    name = dk.name("ev")
    volume = volume_name(dk, "ev")
    since = time.time()
    dk.ok("volume", "create", volume)
    assert (
        dk(
            "run", "--name", name, "-v", f"{volume}:/data", "busybox", "sh", "-c", "exit 3"
        ).returncode
        == 3
    )
    dk.ok("rm", name)
    dk.ok("volume", "rm", volume)
    until = time.time()
    window = ["--since", f"{since:.9f}", "--until", f"{until:.9f}", "--format", "{{json .}}"]
    started = time.monotonic()
    mine = json_lines(dk.ok("events", *window, "--filter", f"container={name}"))
    assert time.monotonic() - started < 10, "a past --until must end the stream at once"
    assert [e["Action"] for e in mine] == ["create", "start", "die", "destroy"]
    assert all(e["Type"] == "container" and e["Actor"]["Attributes"]["name"] == name for e in mine)
    die = mine[2]
    assert die["Actor"]["Attributes"]["exitCode"] == "3"
    assert die["Actor"]["Attributes"]["image"] == "busybox"
    assert die["timeNano"] // 1_000_000_000 == die["time"]
    volumes = json_lines(dk.ok("events", *window, "--filter", f"volume={volume}"))
    assert [e["Action"] for e in volumes] == ["create", "mount", "unmount", "destroy"]
    earlier = ["--since", "1", "--until", f"{since:.9f}", "--format", "{{json .}}"]
    before = json_lines(dk.ok("events", *earlier))
    assert all(e["Actor"]["Attributes"].get("name") != name for e in before)


def _listeners(dk: DockerCLI) -> int:
    return int(dk.ok("info", "--format", "{{.NEventsListener}}").strip())


def test_live_events_for_one_container(dk: DockerCLI) -> None:
    name = dk.name("live")
    quiet = dk.name("quiet")
    watcher = subprocess.Popen(
        [DOCKER, "events", "--filter", f"container={name}", "--format", "{{.Action}}"],
        stdout=subprocess.PIPE,
        text=True,
        env=dk.env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert watcher.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x.strip()) for x in watcher.stdout or []])
    reader.start()
    try:
        wait_until(lambda: _listeners(dk) >= 1, "the events subscription", 30)
        dk.ok("run", "--rm", "--name", quiet, "busybox", "true")  # filtered out
        dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
        dk.ok("exec", name, "true")
        dk.ok("stop", "-t", "1", name)
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while "stop" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        assert seen == [
            "create",
            "start",
            "exec_create: true",
            "exec_start: true",
            "exec_die",
            "kill",
            "die",
            "stop",
        ]
    finally:
        watcher.terminate()
        watcher.wait(10)
        reader.join(10)
    # the agent notices the client went away and drops the subscription
    wait_until(lambda: _listeners(dk) == 0, "the subscription to end", 30)


def test_events_bad_arguments(dk: DockerCLI) -> None:
    bad = dk("events", "--filter", "colour=red", "--until", "1")
    assert bad.returncode == 1 and "invalid filter 'colour'" in bad.stderr
    backwards = dk("events", "--since", "20", "--until", "10")
    assert backwards.returncode == 1 and "since" in backwards.stderr


def test_the_sdk_sees_volumes_networks_and_events(dk: DockerCLI) -> None:
    client = sdk_client(dk)
    name = volume_name(dk, "sdk")
    since = int(time.time())
    volume = client.volumes.create(name, labels={"via": "sdk"})
    assert volume.name == name and volume.attrs["Labels"] == {"via": "sdk"}
    assert name in [v.name for v in client.volumes.list(filters={"label": "via=sdk"})]
    client.volumes.get(name).remove(force=True)
    assert name not in [v.name for v in client.volumes.list()]
    names = {n.name for n in client.networks.list()}
    assert {"host", "none"} <= names
    assert client.networks.get("none").attrs["Driver"] == "null"
    assert client.info()["OSType"] == "linux"
    until = int(time.time()) + 1
    seen = [
        (e["Type"], e["Action"])
        for e in client.events(since=since, until=until, decode=True, filters={"volume": name})
    ]
    assert seen == [("volume", "create"), ("volume", "destroy")]


# --- vmctl verbs ------------------------------------------------------------------------------


def test_vmctl_volume_and_info(agent: NativeAgent, dk: DockerCLI) -> None:
    name = volume_name(dk, "vmctl")
    assert agent.vmctl("volume", "create", "--label", "k=v", name, check=True).stdout == f"{name}\n"
    listed = agent.vmctl("volume", "ls", "--format", "json", "--filter", "label=k=v", check=True)
    [row] = [r for r in json_lines(listed.stdout) if r["Name"] == name]
    assert (row["Driver"], row["Labels"], row["Scope"]) == ("local", "k=v", "local")
    table = agent.vmctl("volume", "ls", check=True).stdout
    assert table.startswith("DRIVER    VOLUME NAME\n") and f"local     {name}\n" in table
    [inspected] = json.loads(agent.vmctl("volume", "inspect", name, check=True).stdout)
    assert inspected["Labels"] == {"k": "v"}
    missing = agent.vmctl("volume", "inspect", "nosuchvolume")
    assert missing.returncode == 1 and "no such volume" in missing.stderr
    assert agent.vmctl("volume", "rm", name, check=True).stdout == f"{name}\n"
    assert agent.vmctl("volume", "rm", name).returncode == 1
    pruned = agent.vmctl("volume", "prune", "--force", check=True)
    assert "Total reclaimed space:" in pruned.stdout
    refused = agent.vmctl("volume", "prune")  # no terminal to answer the question
    assert refused.returncode == 1 and "cancelled" in refused.stderr
    info = agent.vmctl("info", check=True).stdout
    assert "Storage Driver: overlay2" in info and f"Docker Root Dir: {agent.root}" in info
    data = json.loads(agent.vmctl("info", "--format", "json", check=True).stdout)
    assert data["OSType"] == "linux" and data["NCPU"] == len(os.sched_getaffinity(0))

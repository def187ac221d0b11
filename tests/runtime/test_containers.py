"""Real containers on this host: isolation, confinement, lifecycle, logs (needs root)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from agent.errors import AgentError, BadRequest, Conflict, NotFound
from agent.runtime import capabilities
from tests.runtime.conftest import Engine

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)


# --- isolation ------------------------------------------------------------------------------


def test_runs_and_reports_exit_code_and_streams(engine: Engine) -> None:
    result = engine.sh("echo out; echo err >&2; exit 3")
    assert result.code == 3
    assert result.out == "out\n"
    assert result.err == "err\n"
    assert result.container.state.status == "exited"
    assert result.container.state.finished_at > result.container.state.started_at


def test_host_processes_mounts_hostname_and_interfaces_are_invisible(engine: Engine) -> None:
    result = engine.sh(
        "ps -o pid,comm; echo ---; cat /proc/mounts; echo ---; hostname; "
        "echo ---; ls /sys/class/net"
    )
    processes, mounts, hostname, interfaces = result.out.split("---\n")
    pids = [line.split()[0] for line in processes.splitlines()[1:]]
    assert pids == ["1", pids[-1]] or pids == ["1"], processes  # sh, and ps as its child
    assert len(pids) <= 2
    points = [line.split()[1] for line in mounts.splitlines()]
    assert not [p for p in points if p.startswith(("/var/tmp", "/work", "/boot", "/run"))]
    assert len(points) < 30
    assert mounts.splitlines()[0].startswith("overlay / overlay")
    assert hostname.strip() == result.container.id[:12]
    assert hostname.strip() != socket.gethostname()
    assert interfaces.split() == ["lo"]


def test_etc_files_are_managed(engine: Engine) -> None:
    result = engine.sh(
        "cat /etc/hostname; cat /etc/hosts; cat /etc/resolv.conf",
        ExtraHosts=["db.example:10.1.2.3"],
        Dns=["192.0.2.53"],
        DnsSearch=["example.org"],
    )
    assert result.out.startswith(result.container.id[:12] + "\n")
    assert "127.0.0.1\tlocalhost" in result.out
    assert "10.1.2.3\tdb.example" in result.out
    assert "nameserver 192.0.2.53" in result.out
    assert "search example.org" in result.out


def test_default_confinement_refuses_privileged_operations(engine: Engine) -> None:
    checks = {
        "mount": "mount -t tmpfs none /mnt",
        "unshare": "unshare -m true",
        "proc_sys": "echo 1 > /proc/sys/kernel/sysrq",
        "reboot": "reboot -f",
        "insmod": "insmod /nonexistent.ko",
        "sysrq": "echo h > /proc/sysrq-trigger",
        "kcore": "test -s /proc/kcore",
    }
    script = "; ".join(
        f"{cmd} 2>/dev/null && echo {name}:allowed || echo {name}:refused"
        for name, cmd in checks.items()
    )
    result = engine.sh("mkdir -p /mnt; " + script)
    for name in checks:
        assert f"{name}:refused" in result.out, result.out


def test_privileged_lifts_the_confinement(engine: Engine) -> None:
    result = engine.sh(
        "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mount:ok; "
        "unshare -m true && echo unshare:ok; grep CapEff /proc/self/status",
        Privileged=True,
    )
    assert "mount:ok" in result.out and "unshare:ok" in result.out, result.out + result.err
    effective = int(result.out.split("CapEff:")[1].split()[0], 16)
    assert effective == capabilities.current()["CapEff"]  # all the daemon has


def test_device_nodes_can_be_made_but_only_harmless_ones_used(engine: Engine) -> None:
    if engine.hierarchy is None:
        pytest.skip("the device filter attaches to a cgroup v2 directory; this host has none")
    script = (
        "mknod /lc c 10 237 && echo mknod:ok; "  # /dev/loop-control
        "(: < /lc) 2>/dev/null && echo open:ok || echo open:refused; "
        ": < /dev/null && : < /dev/urandom && : > /dev/full && echo harmless:ok"
    )
    default = engine.sh(script).out
    assert "mknod:ok" in default and "open:refused" in default, default
    assert "harmless:ok" in default, default
    assert "open:ok" in engine.sh(script, DeviceCgroupRules=["c 10:237 r"]).out
    assert "open:ok" in engine.sh(script, Privileged=True).out
    with pytest.raises(BadRequest, match="invalid device cgroup rule"):
        engine.create(["true"], DeviceCgroupRules=["x 1:2 r"])


def test_default_capabilities_and_cap_drop_net_raw(engine: Engine) -> None:
    default = engine.sh(
        "grep CapEff /proc/self/status; ping -c1 -W1 127.0.0.1 >/dev/null && echo ping:ok"
    )
    effective = int(default.out.split("CapEff:")[1].split()[0], 16)
    assert effective == capabilities.mask(set(capabilities.DEFAULT))
    assert "ping:ok" in default.out, default.err
    dropped = engine.sh(
        "ping -c1 -W1 127.0.0.1 >/dev/null && echo ping:ok || echo ping:no", CapDrop=["NET_RAW"]
    )
    assert "ping:no" in dropped.out


def test_cap_add_and_user_switch(engine: Engine) -> None:
    added = engine.sh("grep CapEff /proc/self/status", CapAdd=["NET_ADMIN"])
    effective = int(added.out.split("CapEff:")[1].split()[0], 16)
    assert effective & (1 << capabilities.CAPABILITIES["NET_ADMIN"])
    user = engine.sh("id; grep -E 'CapEff|CapBnd' /proc/self/status", config={"User": "nobody"})
    assert "uid=65534(nobody) gid=65534(nogroup)" in user.out
    assert "CapEff:\t0000000000000000" in user.out
    numeric = engine.sh("id -u; id -g; id -G", config={"User": "1234:5678"}, GroupAdd=["wheel"])
    assert numeric.out.split() == ["1234", "5678", "5678", "10"]


def test_unknown_user_fails_to_start_with_a_clear_error(engine: Engine) -> None:
    container = engine.create(["true"], config={"User": "nosuchuser"})
    with pytest.raises(AgentError, match="unable to find user nosuchuser"):
        engine.manager.start(container.id)
    assert container.state.status == "created"


def test_no_new_privileges_and_seccomp_unconfined(engine: Engine) -> None:
    plain = engine.sh("grep -E 'NoNewPrivs|Seccomp:' /proc/self/status")
    assert "NoNewPrivs:\t0" in plain.out and "Seccomp:\t2" in plain.out
    nnp = engine.sh("grep NoNewPrivs /proc/self/status", SecurityOpt=["no-new-privileges"])
    assert "NoNewPrivs:\t1" in nnp.out
    unconfined = engine.sh("grep 'Seccomp:' /proc/self/status", SecurityOpt=["seccomp=unconfined"])
    assert "Seccomp:\t0" in unconfined.out


def test_ulimits_readonly_rootfs_tmpfs_and_shm(engine: Engine) -> None:
    result = engine.sh(
        "ulimit -n; touch /x 2>/dev/null && echo root:rw || echo root:ro; "
        "touch /scratch/y && echo tmpfs:rw; df -k /dev/shm | tail -1",
        Ulimits=[{"Name": "nofile", "Soft": 321, "Hard": 654}],
        ReadonlyRootfs=True,
        Tmpfs={"/scratch": "size=1m"},
        ShmSize=8 * 1024 * 1024,
    )
    lines = result.out.splitlines()
    assert lines[0] == "321"
    assert "root:ro" in result.out and "tmpfs:rw" in result.out, result.out + result.err
    assert lines[-1].split()[1] == str(8 * 1024)


def test_bind_mounts_rw_and_ro(engine: Engine, tmp_path: object) -> None:
    host = os.path.join(engine.root, "shared")
    os.makedirs(host)
    with open(os.path.join(host, "in.txt"), "w") as handle:
        handle.write("from host\n")
    result = engine.sh(
        "cat /data/in.txt; echo from container > /data/out.txt; "
        "touch /ro/z 2>/dev/null && echo ro:writable || echo ro:readonly",
        Binds=[f"{host}:/data", f"{host}:/ro:ro"],
    )
    assert "from host" in result.out and "ro:readonly" in result.out
    with open(os.path.join(host, "out.txt")) as handle:
        assert handle.read() == "from container\n"


def test_named_volume_persists_and_is_filled_from_the_image(engine: Engine) -> None:
    first = engine.sh("ls /data; echo kept > /data/file", Binds=["vol1:/data"])
    assert first.code == 0
    second = engine.sh("cat /data/file", Binds=["vol1:/data"])
    assert second.out == "kept\n"
    seeded = engine.sh("ls /etc-copy", Binds=["vol2:/etc-copy"])
    assert seeded.out == ""  # nothing in the image at that path: the volume stays empty
    etc = engine.sh("ls /etc", Binds=["vol3:/etc"])
    assert "passwd" in etc.out.split()  # Docker's copy-up of the image's /etc
    assert sorted(v.name for v in engine.volumes.all()) == ["vol1", "vol2", "vol3"]


# --- lifecycle ------------------------------------------------------------------------------


def test_exec_failures_give_docker_exit_codes(engine: Engine) -> None:
    missing = engine.create(["nosuchcommand"])
    with pytest.raises(AgentError, match='exec: "nosuchcommand": executable file not found'):
        engine.manager.start(missing.id)
    assert missing.state.exit_code == 127
    assert engine.manager.all()  # nothing vanished
    not_exec = engine.create(["/etc/passwd"])
    with pytest.raises(AgentError, match="permission denied"):
        engine.manager.start(not_exec.id)
    assert not_exec.state.exit_code == 126


def test_stop_kills_a_process_that_ignores_sigterm(engine: Engine) -> None:
    container = engine.create(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    engine.manager.start(container.id)
    started = time.monotonic()
    assert engine.manager.stop(container.id, timeout=1)
    elapsed = time.monotonic() - started
    assert container.state.status == "exited"
    assert container.state.exit_code == 137
    assert elapsed >= 1.0


def test_stop_signal_and_kill(engine: Engine) -> None:
    graceful = engine.create(
        ["sh", "-c", "trap 'exit 7' USR1; while :; do sleep 0.1; done"],
        config={"StopSignal": "SIGUSR1"},
    )
    engine.manager.start(graceful.id)
    time.sleep(0.3)
    engine.manager.stop(graceful.id, timeout=10)
    assert graceful.state.exit_code == 7
    killed = engine.create(["sleep", "100"])
    engine.manager.start(killed.id)
    engine.manager.kill(killed.id, "SIGKILL")
    assert engine.manager.wait(killed.id, timeout=10) == 137
    with pytest.raises(Conflict):
        engine.manager.kill(killed.id)


def test_pause_and_unpause(engine: Engine) -> None:
    if engine.hierarchy is None:
        pytest.skip("no cgroup2 mount")
    container = engine.create(["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
    engine.manager.start(container.id)
    time.sleep(0.3)
    engine.manager.pause(container.id)
    before = len(engine.output(container)[0])
    time.sleep(0.5)
    assert len(engine.output(container)[0]) == before
    assert container.state.status == "paused"
    engine.manager.unpause(container.id)
    time.sleep(0.5)
    assert len(engine.output(container)[0]) > before
    engine.manager.stop(container.id, timeout=1)


def test_restart_policies(engine: Engine) -> None:
    on_failure = engine.create(
        ["sh", "-c", "exit 1"], RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 2}
    )
    engine.manager.start(on_failure.id)
    deadline = time.monotonic() + 20
    while on_failure.state.restart_count < 2 or on_failure.state.status != "exited":
        assert time.monotonic() < deadline, on_failure.state
        time.sleep(0.05)
    time.sleep(0.5)
    assert on_failure.state.restart_count == 2 and on_failure.state.status == "exited"

    no = engine.create(["sh", "-c", "exit 1"])
    engine.manager.start(no.id)
    engine.manager.wait(no.id, timeout=10)
    assert no.state.restart_count == 0

    always = engine.create(["sh", "-c", "exit 0"], RestartPolicy={"Name": "always"})
    engine.manager.start(always.id)
    while always.state.restart_count < 2:
        assert time.monotonic() < deadline + 20
        time.sleep(0.05)
    engine.manager.stop(always.id, timeout=1)
    time.sleep(0.5)
    assert always.state.status == "exited"  # docker stop holds an "always" container down


def test_start_while_a_restart_is_pending_and_a_restart_that_fails(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = engine.manager
    looping = engine.create(["sh", "-c", "exit 1"], RestartPolicy={"Name": "always"})
    manager.start(looping.id)
    deadline = time.monotonic() + 30
    # from the fourth restart on, the next one waits 0.8 s or more
    while looping.state.restart_count < 4 or looping.state.status != "restarting":
        assert time.monotonic() < deadline, looping.state
        time.sleep(0.01)
    launches: list[str] = []
    launch = manager._launch

    def counted(container: object) -> None:
        launches.append("launch")
        launch(container)  # type: ignore[arg-type]

    monkeypatch.setattr(manager, "_launch", counted)
    # as dockerd: a restarting container counts as running (304), no second launch
    assert manager.start(looping.id) is looping and launches == []

    # a restart whose root filesystem cannot be mounted leaves the container exited
    def no_overlay(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr("agent.containers.rootfs.linux.mount", no_overlay)
    count = looping.state.restart_count
    while looping.state.restart_count == count or looping.state.status == "restarting":
        assert time.monotonic() < deadline + 30, looping.state
        time.sleep(0.05)
    assert looping.state.status == "exited", looping.state
    assert "No such device" in looping.state.error
    manager.stop(looping.id, timeout=1)


def test_starting_containers_leaves_the_umask_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers start from several threads at once and the umask is the whole process's:
    a save-and-restore pair racing another once left it at 0177."""
    calls: list[tuple[int, int]] = []
    real = os.umask

    def spy(mask: int) -> int:
        calls.append((os.getpid(), mask))  # the forked init sets its own: not counted
        return real(mask)

    monkeypatch.setattr(os, "umask", spy)
    container = engine.create(["true"])
    engine.manager.start(container.id)
    assert engine.manager.wait(container.id, timeout=10) == 0
    assert [mask for pid, mask in calls if pid == os.getpid()] == []
    assert os.stat(engine.manager.attach_socket(container)).st_mode & 0o777 == 0o600


def test_wait_conditions_and_remove(engine: Engine) -> None:
    container = engine.create(["sleep", "0.3"])
    engine.manager.start(container.id)
    assert engine.manager.wait(container.id, "next-exit", timeout=10) == 0
    engine.manager.start(container.id)
    with pytest.raises(Conflict, match="stop the container before removing"):
        engine.manager.remove(container.id)
    engine.manager.remove(container.id, force=True)
    with pytest.raises(NotFound):
        engine.manager.get(container.id)
    assert not os.path.exists(container.directory)


def test_bad_requests_leave_nothing_behind(engine: Engine) -> None:
    before = os.listdir(engine.manager.root)
    bad = [
        {"CapAdd": ["NOT_A_CAP"]},
        {"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]},
        {"Binds": ["relative/path:/data"]},
        {"SecurityOpt": ["seccomp={not json"]},
        {"RestartPolicy": {"Name": "always"}, "AutoRemove": True},
        {"LogConfig": {"Type": "syslog"}},
    ]
    for host_config in bad:
        with pytest.raises(BadRequest):
            engine.create(["true"], **host_config)
    with pytest.raises(NotFound, match="No such image: nosuchimage:latest"):
        engine.manager.create({"Image": "nosuchimage", "Cmd": ["true"]})
    assert engine.create(["true"]).name  # a good one still works
    with pytest.raises(Conflict, match="already in use"):
        name = engine.manager.all()[0].name
        engine.manager.create({"Image": "busybox", "Cmd": ["true"]}, name=name)
    assert len(os.listdir(engine.manager.root)) == len(before) + 1


def test_logs_rotate(engine: Engine) -> None:
    result = engine.sh(
        "i=0; while [ $i -lt 400 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
        "i=$((i+1)); done",
        LogConfig={"Type": "json-file", "Config": {"max-size": "4k", "max-file": "3"}},
    )
    log = result.container.log_file
    assert os.path.exists(log + ".1") and os.path.exists(log + ".2")
    assert not os.path.exists(log + ".3")
    assert all(os.path.getsize(p) <= 4096 for p in (log, log + ".1", log + ".2"))
    assert result.out.splitlines()[-1].startswith("line-399-")


def test_host_network_and_pid_namespaces(engine: Engine) -> None:
    result = engine.sh("ls /sys/class/net; echo ---; echo $$", NetworkMode="host", PidMode="host")
    interfaces, pid = result.out.split("---\n")
    assert set(interfaces.split()) == set(os.listdir("/sys/class/net"))
    assert int(pid) != 1


# --- exec -----------------------------------------------------------------------------------


def _read_all(fd: int | None) -> bytes:
    if fd is None:
        return b""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: a terminal whose other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_exec_joins_the_container_with_its_own_user_env_and_workdir(engine: Engine) -> None:
    container = engine.create(["sleep", "30"], config={"Env": ["FROM_IMAGE=1"]})
    engine.manager.start(container.id)
    manager = engine.manager
    instance = manager.exec_create(
        container.id,
        {
            "Cmd": [
                "sh",
                "-c",
                "echo $FOO $FROM_IMAGE; id -u; pwd; hostname; "
                "cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                "grep -E 'CapEff|Seccomp:' /proc/self/status; echo oops >&2; exit 3",
            ],
            "Env": ["FOO=bar"],
            "User": "nobody",
            "WorkingDir": "/tmp",
            "AttachStdout": True,
            "AttachStderr": True,
        },
    )
    handle = manager.exec_start(instance.id)
    out, err = _read_all(handle.stdout).decode(), _read_all(handle.stderr).decode()
    assert manager.exec_finish(instance.id, handle) == 3
    lines = out.splitlines()
    assert lines[:5] == ["bar 1", "65534", "/tmp", container.id[:12], "sleep 30 "], out
    assert "CapEff:\t0000000000000000" in out and "Seccomp:\t2" in out
    assert err == "oops\n"
    assert instance.exit_code == 3 and not instance.running
    engine.manager.stop(container.id, timeout=0)


def test_exec_with_a_terminal_and_failures(engine: Engine) -> None:
    container = engine.create(["sleep", "30"])
    engine.manager.start(container.id)
    manager = engine.manager
    instance = manager.exec_create(container.id, {"Cmd": ["sh", "-c", "tty; exit 4"], "Tty": True})
    handle = manager.exec_start(instance.id)
    output = _read_all(handle.terminal).decode()
    assert manager.exec_finish(instance.id, handle) == 4
    assert output.startswith("/dev/pts/"), output
    missing = manager.exec_create(container.id, {"Cmd": ["nosuchcommand"]})
    with pytest.raises(AgentError, match="executable file not found"):
        manager.exec_start(missing.id)
    assert missing.exit_code == 127
    with pytest.raises(Conflict):
        manager.exec_start(instance.id)  # an exec runs once
    engine.manager.stop(container.id, timeout=0)
    with pytest.raises(Conflict, match="is not running"):
        manager.exec_create(container.id, {"Cmd": ["true"]})


def test_terminal_starts_at_the_requested_console_size(engine: Engine) -> None:
    result = engine.run(["stty", "size"], config={"Tty": True}, ConsoleSize=[41, 123])
    assert result.code == 0 and result.out.strip() == "41 123", result.out
    container = engine.create(["sleep", "30"])
    engine.manager.start(container.id)
    instance = engine.manager.exec_create(
        container.id, {"Cmd": ["stty", "size"], "Tty": True, "ConsoleSize": [17, 71]}
    )
    handle = engine.manager.exec_start(instance.id)
    output = _read_all(handle.terminal).decode()
    assert engine.manager.exec_finish(instance.id, handle) == 0
    assert output.strip() == "17 71", output
    engine.manager.stop(container.id, timeout=0)


def test_auto_remove_container_that_cannot_start_is_removed(engine: Engine) -> None:
    container = engine.create(["/no/such/command"], AutoRemove=True)
    with pytest.raises(AgentError, match="no such file|not found"):
        engine.manager.start(container.id)
    with pytest.raises(NotFound):
        engine.manager.get(container.id)
    assert not os.path.exists(container.directory)
    kept = engine.create(["/no/such/command"])  # without --rm it stays, as "created"
    with pytest.raises(AgentError):
        engine.manager.start(kept.id)
    assert engine.manager.get(kept.id).state.status == "created"


# --- attach ---------------------------------------------------------------------------------


def test_attach_with_a_terminal_input_output_and_resize(engine: Engine) -> None:
    from agent.runtime import attach

    container = engine.create(["sh"], config={"Tty": True, "OpenStdin": True})
    engine.manager.start(container.id)
    path = engine.manager.attach_socket(container)
    attach.resize(path, 33, 101)
    sock = attach.connect(path, stdin=True, stdout=True, stderr=True)
    sock.sendall(b"stty size; tty; exit 5\n")
    output = b"".join(payload for stream, payload in attach.frames(sock)).decode()
    sock.close()
    assert engine.manager.wait(container.id, timeout=10) == 5
    assert "33 101" in output and "/dev/pts/0" in output, output
    logged, _ = engine.output(container)
    assert "33 101" in logged  # the terminal's output is also in the log


def test_attach_without_terminal_closes_stdin_at_eof(engine: Engine) -> None:
    from agent.runtime import attach

    container = engine.create(["sh", "-c", "cat; echo done >&2"], config={"OpenStdin": True})
    engine.manager.start(container.id)
    sock = attach.connect(engine.manager.attach_socket(container), True, True, True)
    sock.sendall(b"data from stdin\n")
    sock.shutdown(socket.SHUT_WR)
    got = list(attach.frames(sock))
    sock.close()
    assert (1, b"data from stdin\n") in got and (2, b"done\n") in got
    assert engine.manager.wait(container.id, timeout=10) == 0


def test_init_reaps_orphans_and_passes_signals_on(engine: Engine) -> None:
    plain = engine.sh("cat /proc/1/comm; true")
    assert plain.out.strip() == "sh"
    container = engine.create(
        [
            "sh",
            "-c",
            "trap 'echo got-term; exit 9' TERM; (sleep 0.1 &) ; "
            "cat /proc/1/comm; echo ready; while :; do sleep 0.1; done",
        ],
        Init=True,
    )
    engine.manager.start(container.id)
    deadline = time.monotonic() + 10
    while "ready" not in engine.output(container)[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # the orphaned sleep has exited: PID 1 must have reaped it
    pid = container.state.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1  # only the command itself is PID 1's child
    assert engine.manager.stop(container.id, timeout=10)
    out, _ = engine.output(container)
    assert out.splitlines()[0] == "init" and "got-term" in out
    assert container.state.exit_code == 9


def test_joining_another_containers_namespaces(engine: Engine) -> None:
    first = engine.create(
        ["sh", "-c", "hostname > /dev/shm/mark; sleep 30"],
        config={"Hostname": "first"},
        IpcMode="shareable",
    )
    engine.manager.start(first.id)
    time.sleep(0.3)
    joined = engine.sh(
        "ps -o comm | grep -c sleep; hostname; cat /dev/shm/mark; readlink /proc/1/ns/net",
        PidMode=f"container:{first.id}",
        IpcMode=f"container:{first.name}",
        NetworkMode=f"container:{first.id[:12]}",
        UTSMode=f"container:{first.id}",
    )
    lines = joined.out.split()
    assert lines[:3] == ["1", "first", "first"], joined.out + joined.err
    assert lines[3] == os.readlink(f"/proc/{first.state.pid}/ns/net")
    engine.manager.stop(first.id, timeout=0)
    with pytest.raises(Conflict, match="not running"):
        engine.manager.start(engine.create(["true"], PidMode=f"container:{first.id}").id)


def test_volumes_from_and_prune(engine: Engine) -> None:
    host = os.path.join(engine.root, "data")
    os.makedirs(host)
    source = engine.run(["sh", "-c", "echo v > /vol/f"], Binds=["named:/vol", f"{host}:/h:ro"])
    reader = engine.sh(
        "cat /vol/f; touch /h/x 2>/dev/null || echo h:ro", VolumesFrom=[source.container.name]
    )
    assert reader.out.split() == ["v", "h:ro"]
    anonymous = engine.run(["true"], config={"Volumes": {"/anon": {}}})
    anon_name = next(m["Name"] for m in anonymous.container.mounts if m["Type"] == "volume")
    engine.manager.remove(anonymous.container.id)
    in_use = {m["Name"] for c in engine.manager.all() for m in c.mounts if m.get("Name")}
    removed, _ = engine.volumes.prune(in_use)
    assert removed == [anon_name]  # named volumes stay unless asked for
    assert {v.name for v in engine.volumes.all()} == {"named"}

"""The CLI without a VM: argument handling, env output, and one-line errors with hints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmctl import cli
from vmctl.paths import Paths


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    # These tests boot nothing: the only QEMU on PATH is a stand-in that refuses to run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-img", "sh", "bash", "ssh"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    fake = bin_dir / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'stand-in QEMU: unit tests boot no VM' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return tmp_path / "home"


def run(*argv: str) -> tuple[int, str, str]:
    """Run the real console entry point in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "vmctl.cli", *argv],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def one_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "hint: " in stderr
    return lines[0]


def test_ssh_command_after_double_dash() -> None:
    assert cli.split_ssh_command(["machine", "ssh", "--", "uname", "-r"]) == (
        ["machine", "ssh"],
        ["uname", "-r"],
    )
    assert cli.split_ssh_command(["machine", "ssh", "dev", "--", "ls", "--", "x"]) == (
        ["machine", "ssh", "dev"],
        ["ls", "--", "x"],
    )
    assert cli.split_ssh_command(["machine", "ls"]) == (["machine", "ls"], None)


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "export DOCKER_HOST=unix:///m/engine.sock"),
        ("fish", "set -gx DOCKER_HOST unix:///m/engine.sock;"),
        ("powershell", '$Env:DOCKER_HOST = "unix:///m/engine.sock"'),
        ("cmd", "SET DOCKER_HOST=unix:///m/engine.sock"),
    ],
)
def test_env_lines(shell: str, expected: str) -> None:
    assert cli.env_lines(Path("/m/engine.sock"), shell, False, "default")[0] == expected


def test_env_unset() -> None:
    assert cli.env_lines(Path("/m/e.sock"), "sh", True, "default") == ["unset DOCKER_HOST"]
    assert cli.env_lines(Path("/m/e.sock"), "fish", True, "default") == ["set -e DOCKER_HOST;"]


def test_env_output_can_be_evaluated(home: Path) -> None:
    code, _, err = run("machine", "create", "--no-mount")
    assert code == 0, err
    code, out, _ = run("machine", "env", "--shell", "bash")
    assert code == 0
    sock = Paths.from_env().machine_dir("default") / "engine.sock"
    shown = subprocess.run(
        ["bash", "-c", out + '\necho "$DOCKER_HOST"'], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert shown == f"unix://{sock}"


def test_unknown_machine(home: Path) -> None:
    # (`start` is not among them: it creates the machine it does not find.)
    for verb in ("stop", "restart", "status", "ssh", "env", "logs", "doctor", "rm"):
        code, _, err = run("machine", verb, "ghost")
        if verb == "doctor":  # doctor reports on everything, the missing machine included
            assert code == 0 and "does not exist" in run("machine", verb, "ghost")[1]
            continue
        assert code == 1, (verb, err)
        assert "machine 'ghost' does not exist" in one_error(err)


def test_create_then_create_again(home: Path) -> None:
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    code, _, err = run("machine", "create", "dev", "--no-mount")
    assert code == 1 and "already exists" in one_error(err)


def test_create_lays_out_the_machine_dir(home: Path) -> None:
    code, _, err = run("machine", "create", "dev", "--no-mount", "--cpus", "3", "--memory", "1G")
    assert code == 0, err
    d = home / "machines" / "dev"
    config = json.loads((d / "config.json").read_text())
    assert config["cpus"] == 3 and config["memory_mib"] == 1024 and config["mounts"] == []
    for name in (
        "disk.qcow2",
        "id_ed25519",
        "id_ed25519.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "known_hosts",
    ):
        assert (d / name).exists(), name
    assert (d / "id_ed25519").stat().st_mode & 0o077 == 0
    assert (d / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0
    assert d.stat().st_mode & 0o077 == 0


def test_default_mount_is_home(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_home = tmp_path / "user"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    assert run("machine", "create")[0] == 0
    config = json.loads((home / "machines" / "default" / "config.json").read_text())
    assert config["mounts"] == [{"path": str(fake_home), "writable": True}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "64M"], "too small to boot"),
        (["--mount", "/no/such/dir"], "does not exist"),
        (["--cpus", "0"], "cpus must be"),
        (["--memory", "lots"], "cannot read size"),
    ],
)
def test_bad_create_leaves_nothing(home: Path, args: list[str], message: str) -> None:
    code, _, err = run("machine", "create", "dev", *args)
    assert code == 1
    assert message in one_error(err)
    assert not (home / "machines" / "dev").exists()


def test_bad_start_leaves_nothing(home: Path) -> None:
    code, _, err = run("machine", "start", "--memory", "100M")
    assert code == 1 and "too small to boot" in one_error(err)
    assert not (home / "machines" / "default").exists()


def test_corrupt_config(home: Path) -> None:
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    (home / "machines" / "dev" / "config.json").write_text("{oops")
    for verb in ("start", "status", "env"):
        code, _, err = run("machine", verb, "dev")
        assert code == 1
        assert "corrupt config" in one_error(err)
    code, out, _ = run("machine", "ls", "--format", "json")
    assert code == 0 and json.loads(out)[0]["state"] == "broken"
    assert run("machine", "rm", "--force", "dev")[0] == 0
    assert not (home / "machines" / "dev").exists()


def test_stop_a_stopped_machine(home: Path) -> None:
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    code, _, err = run("machine", "stop", "dev")
    assert code == 1 and "is not running" in one_error(err)


def test_no_qemu_on_path(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = run("machine", "start", "dev")
    assert code == 1 and "qemu-system-x86_64 not found on PATH" in one_error(err)
    assert not (home / "machines" / "dev" / "hostagent.pid").exists()


def test_ssh_port_in_use(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run("machine", "start", "dev", "--no-mount", "--ssh-port", str(port))
    assert code == 1 and f"port {port} on 127.0.0.1 is already in use" in one_error(err)


def test_engine_socket_in_use(home: Path) -> None:
    import socket

    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    path = home / "machines" / "dev" / "engine.sock"
    with socket.socket(socket.AF_UNIX) as squatter:
        squatter.bind(str(path))
        squatter.listen(1)
        code, _, err = run("machine", "start", "dev")
    assert code == 1 and "in use by another process" in one_error(err)


def test_ls_empty_and_json(home: Path) -> None:
    code, out, _ = run("machine", "ls", "--format", "json")
    assert code == 0 and json.loads(out) == []
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    rows = json.loads(run("machine", "ls", "--format", "json")[1])
    assert rows[0]["name"] == "dev" and rows[0]["state"] == "stopped"


def test_status_of_a_stopped_machine(home: Path) -> None:
    assert run("machine", "create", "dev", "--no-mount")[0] == 0
    code, out, _ = run("machine", "status", "dev", "--format", "json")
    assert code == 0 and json.loads(out)["state"] == "stopped"


def test_ssh_command_quoting(home: Path) -> None:
    from vmctl.machine import Machine

    machine = Machine(Paths.from_env(), "dev")
    one = cli.ssh_argv(machine, 2222, ["ls -l / | wc -l"], tty=False)
    assert one[-2:] == ["--", "ls -l / | wc -l"]
    many = cli.ssh_argv(machine, 2222, ["sh", "-c", "echo a; echo b"], tty=False)
    assert many[-2:] == ["--", "sh -c 'echo a; echo b'"]
    assert "StrictHostKeyChecking=yes" in one and "HostKeyAlias=vmctl-dev" in one
    assert one[one.index("-p") + 1] == "2222"


def test_rotate_keeps_one_previous_log(tmp_path: Path) -> None:
    from vmctl.machine import LOG_ROTATE_BYTES, rotate

    log = tmp_path / "hostagent.log"
    rotate(log)  # absent: nothing to do
    log.write_bytes(b"x" * 10)
    rotate(log)
    assert log.exists() and not (tmp_path / "hostagent.log.1").exists()
    log.write_bytes(b"y" * (LOG_ROTATE_BYTES + 1))
    rotate(log)
    assert not log.exists() and (tmp_path / "hostagent.log.1").stat().st_size > LOG_ROTATE_BYTES


def test_start_with_a_vanished_share(home: Path, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    assert run("machine", "create", "dev", "--mount", str(share))[0] == 0
    share.rmdir()
    code, out, _ = run("machine", "status", "dev")
    assert code == 0 and out.startswith("dev: stopped")
    code, _, err = run("machine", "start", "dev")
    assert code == 1 and f"mount path {share} does not exist" in one_error(err)


def test_start_that_cannot_work_creates_nothing(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run("machine", "start", "--no-mount", "--ssh-port", str(port))
    assert code == 1 and "already in use" in one_error(err)
    assert not (home / "machines" / "default").exists()


def test_unusable_home_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VMCTL_HOME", str(blocker / "home"))
    code, _, err = run("machine", "create", "--no-mount")
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`vmctl machine ls | head -0`: no traceback, no `error: Broken pipe`."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before vmctl writes its first line
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vmctl.cli", "machine", "ls"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, VMCTL_HOME=str(tmp_path)),
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141  # 128 + SIGPIPE, as a tool killed by it reports
    assert proc.stderr == ""

"""What a docker user does, as tests that run against any of our engines.

The same classes run natively (tests/runtime: an agent on this host, as `vmctl engine
serve` runs it) and through a VM (tests/e2e), each subclass providing the `dk` fixture: a
:class:`DockerCLI` pointed at its engine socket. Only the real docker CLI (28.2.2) and the
`docker` SDK from PyPI talk to the engine here.
"""

from __future__ import annotations

import datetime
import json
import os
import pty
import select
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

DOCKER = "/usr/local/bin/docker"
TIMEOUT = 180.0  # one docker command; under tcg a run takes about a second


class DockerCLI:
    """The docker CLI pointed at one engine socket, removing what its tests name."""

    def __init__(self, socket: Path | str, env: dict[str, str] | None = None) -> None:
        if not os.access(DOCKER, os.X_OK):
            pytest.fail(f"the docker CLI is missing at {DOCKER}")
        self.socket = str(socket)
        base = {k: v for k, v in (env or os.environ).items() if k != "DOCKER_CONTEXT"}
        self.env = {**base, "DOCKER_HOST": f"unix://{socket}"}
        self.names: list[str] = []
        self.volumes: list[str] = []
        self.images: list[str] = []

    def name(self, role: str) -> str:
        """A fresh name for a container (or volume, image), removed when the test ends."""
        name = f"t-{role}-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    def __call__(
        self, *args: str, input: str | bytes | None = None, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, *args],
            capture_output=True,
            text=not isinstance(input, bytes),
            env=self.env,
            input=input,
            timeout=timeout,
        )

    def ok(self, *args: str, input: str | None = None, timeout: float = TIMEOUT) -> str:
        proc = self(*args, input=input, timeout=timeout)
        assert proc.returncode == 0, (
            f"docker {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return str(proc.stdout)

    def raw(self, *args: str, stdin: bytes | None = None) -> bytes:
        """stdout as bytes (tarballs), failing on a non-zero exit."""
        proc = subprocess.run(
            [DOCKER, *args], input=stdin, capture_output=True, env=self.env, timeout=TIMEOUT
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout

    def inspect(self, name: str) -> dict[str, Any]:
        data = json.loads(self.ok("inspect", name))
        assert isinstance(data, list) and len(data) == 1
        return dict(data[0])

    def in_pty(self, args: list[str], keys: bytes, expect: bytes) -> tuple[int, bytes]:
        """Run docker in a terminal, type ``keys`` once ``expect``-less output settles;
        (exit code, everything the terminal showed)."""
        pid, master = pty.fork()
        if pid == 0:
            os.execve(DOCKER, [DOCKER, *args], self.env)
        output = b""
        sent = False
        deadline = time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the terminal closed
                        break
                    if not data:
                        break
                    output += data
                if not sent and (expect in output or (not ready and output)):
                    os.write(master, keys)
                    sent = True
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(master)
        return os.waitstatus_to_exitcode(status), output

    def cleanup(self) -> None:
        if self.names:
            self("rm", "-f", *self.names, timeout=300)
        if self.volumes:
            self("volume", "rm", "-f", *self.volumes, timeout=300)
        if self.images:
            self("rmi", "-f", *self.images, timeout=300)


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _unix(timestamp: str) -> int:
    """Whole seconds since the epoch of an RFC 3339 time the engine reported."""
    whole = timestamp[:19]
    return int(
        datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


class ContainerSuite:
    """docker run, logs, exec, ps, inspect, stop, rm: the everyday verbs."""

    def test_run_prints_and_passes_exit_codes(self, dk: DockerCLI) -> None:
        hello = dk("run", "--rm", "busybox", "echo", "hello")
        assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
        failing = dk("run", "--rm", "busybox", "sh", "-c", "echo oops >&2; exit 7")
        assert (failing.returncode, failing.stderr) == (7, "oops\n")
        missing = dk("run", "--rm", "busybox", "nosuchcommand")
        assert missing.returncode == 127, missing.stderr
        assert "executable file not found" in missing.stderr
        unknown = dk("run", "--rm", "nosuchimage:1.0", "true")
        assert unknown.returncode == 125, unknown.stderr
        assert "nosuchimage" in unknown.stderr
        assert not [c for c in dk.ok("ps", "-aq").split() if c], "--rm left containers"

    def test_detached_logs_follow_and_stop(self, dk: DockerCLI) -> None:
        name = dk.name("logs")
        script = (
            "trap 'echo bye; exit 0' TERM; i=0; "
            "while :; do echo line $i; i=$((i+1)); sleep 0.2; done"
        )
        dk.ok("run", "-d", "--name", name, "busybox", "sh", "-c", script)
        follow = subprocess.Popen(
            [DOCKER, "logs", "-f", name], stdout=subprocess.PIPE, env=dk.env, text=True
        )
        assert follow.stdout is not None
        try:
            assert follow.stdout.readline() == "line 0\n"
            assert follow.stdout.readline() == "line 1\n"
            dk.ok("stop", "-t", "5", name)
            rest = follow.stdout.read()  # the follow ends when the container does
            assert follow.wait(30) == 0
        finally:
            if follow.poll() is None:
                follow.kill()
        assert rest.endswith("bye\n"), rest
        state = dk.inspect(name)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0)
        assert dk.ok("logs", name).startswith("line 0\nline 1\n")
        stamped = dk.ok("logs", "-t", "--tail", "1", name)
        assert stamped.endswith(" bye\n") and stamped[:4].isdigit(), stamped

    def test_interactive_terminal(self, dk: DockerCLI) -> None:
        code, shown = dk.in_pty(
            ["run", "-it", "--rm", "busybox", "sh"], b"echo $((6*7)); tty; exit 3\r", b"# "
        )
        assert code == 3, shown
        assert b"42" in shown and b"/dev/pts/0" in shown, shown

    def test_stdin_pipes_through(self, dk: DockerCLI) -> None:
        out = dk.ok("run", "-i", "--rm", "busybox", "cat", input="data from the host\n")
        assert out == "data from the host\n"
        counted = dk.ok("run", "-i", "--rm", "busybox", "wc", "-c", input="x" * 100000)
        assert counted.strip() == "100000"

    def test_exec_interactive_and_plain(self, dk: DockerCLI) -> None:
        name = dk.name("exec")
        dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
        assert dk.ok("exec", name, "sh", "-c", "echo $HOSTNAME; id -u") == (
            f"{dk.inspect(name)['Config']['Hostname']}\n0\n"
        )
        assert dk("exec", name, "sh", "-c", "exit 4").returncode == 4
        assert dk.ok("exec", "-u", "65534", "-w", "/tmp", name, "sh", "-c", "id -u; pwd") == (
            "65534\n/tmp\n"
        )
        code, shown = dk.in_pty(["exec", "-it", name, "sh"], b"tty; exit 5\r", b"# ")
        assert code == 5 and b"/dev/pts/" in shown, shown
        dk.ok("rm", "-f", name)
        assert name not in dk.ok("ps", "-a", "--format", "{{.Names}}").split()

    def test_ps_filters_and_formats(self, dk: DockerCLI) -> None:
        up, done = dk.name("up"), dk.name("done")
        dk.ok("run", "-d", "--name", up, "--label", "suite=ps", "busybox", "sleep", "600")
        assert (
            dk(
                "run", "--name", done, "--label", "suite=ps", "busybox", "sh", "-c", "exit 2"
            ).returncode
            == 2
        )
        running = dk.ok("ps", "--format", "{{.Names}}").split()
        assert up in running and done not in running
        exited = dk.ok("ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}")
        assert done in exited.split() and up not in exited.split()
        labelled = dk.ok("ps", "-a", "--filter", "label=suite=ps", "--format", "{{.Names}}")
        assert sorted(labelled.split()) == sorted([up, done])
        by_name = dk.ok("ps", "-a", "--filter", f"name={done}", "--format", "{{.Status}}")
        assert by_name.startswith("Exited (2)"), by_name
        rows = [json.loads(line) for line in dk.ok("ps", "-a", "--format", "json").splitlines()]
        mine = {row["Names"]: row for row in rows if row["Names"] in (up, done)}
        assert mine[up]["State"] == "running" and mine[up]["Image"] == "busybox"
        quiet = dk.ok("ps", "-q", "--filter", f"name={up}").split()
        assert quiet == [dk.inspect(up)["Id"][:12]]

    def test_inspect_describes_the_container(self, dk: DockerCLI) -> None:
        name = dk.name("inspect")
        dk.ok(
            "run",
            "-d",
            "--name",
            name,
            "-e",
            "GREETING=hi",
            "--restart",
            "on-failure:3",
            "busybox",
            "sleep",
            "600",
        )
        record = dk.inspect(name)
        assert record["Name"] == "/" + name
        assert record["State"]["Running"] is True and record["State"]["Pid"] > 0
        assert "GREETING=hi" in record["Config"]["Env"]
        assert record["Config"]["Image"] == "busybox"
        policy = record["HostConfig"]["RestartPolicy"]
        assert (policy["Name"], policy["MaximumRetryCount"]) == ("on-failure", 3)
        fmt = dk.ok("inspect", "--format", "{{.State.Status}} {{.Config.Cmd}}", name)
        assert fmt.strip() == "running [sleep 600]"
        missing = dk("inspect", "nosuchcontainer")
        assert missing.returncode == 1 and "No such" in missing.stderr


def sdk_client(dk: DockerCLI) -> Any:
    """The `docker` SDK's client on the same engine socket."""
    docker = pytest.importorskip("docker")
    return docker.DockerClient(base_url=f"unix://{dk.socket}", timeout=int(TIMEOUT))


class SdkSuite:
    """The `docker` SDK from PyPI, as scripts use it."""

    def client(self, dk: DockerCLI) -> Any:
        return sdk_client(dk)

    def test_containers(self, dk: DockerCLI) -> None:
        client = self.client(dk)
        assert client.containers.run("busybox", ["echo", "hi"], remove=True) == b"hi\n"
        name = dk.name("sdk")
        container = client.containers.run(
            "busybox", ["sh", "-c", "echo started; sleep 600"], name=name, detach=True
        )
        wait_until(lambda: b"started" in container.logs(), "the container's first line")
        assert name in [c.name for c in client.containers.list()]
        fetched = client.containers.get(name)
        assert fetched.id == container.id and fetched.status == "running"
        result = fetched.exec_run(["sh", "-c", "echo $((2+3)); exit 3"])
        assert (result.exit_code, result.output) == (3, b"5\n")
        fetched.stop(timeout=1)
        fetched.reload()
        assert fetched.status == "exited"
        fetched.remove()
        assert name not in [c.name for c in client.containers.list(all=True)]
        client.close()


class SdkImagesSuite(SdkSuite):
    def test_images_and_volumes(self, dk: DockerCLI) -> None:
        client = self.client(dk)
        assert "busybox:latest" in [t for image in client.images.list() for t in image.tags]
        image = client.images.get("busybox")
        archive = b"".join(image.save())
        loaded = client.images.load(archive)
        assert [i.id for i in loaded] == [image.id]
        name = dk.name("sdkvol")
        dk.volumes.append(name)
        volume = client.volumes.create(name, labels={"suite": "sdk"})
        assert name in [v.name for v in client.volumes.list(filters={"label": "suite=sdk"})]
        volume.remove()
        assert name not in [v.name for v in client.volumes.list()]
        client.close()


class ToolsSuite:
    """cp, stats, top, events, volumes, save/load, export/import, system df."""

    def test_cp_both_ways(self, dk: DockerCLI, tmp_path: Path) -> None:
        name = dk.name("cp")
        dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
        source = tmp_path / "in.txt"
        source.write_text("from the host\n")
        dk.ok("cp", str(source), f"{name}:/tmp/in.txt")
        assert dk.ok("exec", name, "cat", "/tmp/in.txt") == "from the host\n"
        dk.ok("exec", name, "sh", "-c", "mkdir /out && echo back > /out/file")
        dk.ok("cp", f"{name}:/out", str(tmp_path / "out"))
        assert (tmp_path / "out" / "file").read_text() == "back\n"

    def test_stats_top_and_events(self, dk: DockerCLI) -> None:
        name = dk.name("stats")
        dk.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
        stats = dk.ok("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", name)
        assert stats.split() == [name, "1"], stats
        top = dk.ok("top", name)
        assert "sleep 600" in top and top.startswith("UID"), top
        dk.ok("stop", "-t", "1", name)
        # the engine's clock, not ours: a VM's may run a little ahead or behind the host's
        state = dk.inspect(name)
        since = str(_unix(state["Created"]) - 1)
        until = str(_unix(state["State"]["FinishedAt"]) + 2)
        events = dk.ok(
            "events",
            "--since",
            since,
            "--until",
            until,
            "--filter",
            f"container={name}",
            "--format",
            "{{.Action}}",
        )
        actions = events.split()
        for action in ("create", "start", "die", "stop"):
            assert action in actions, actions

    def test_volume_persists_across_containers(self, dk: DockerCLI) -> None:
        volume = dk.name("vol")
        dk.volumes.append(volume)
        dk.ok("volume", "create", volume)
        assert volume in dk.ok("volume", "ls", "--format", "{{.Name}}").split()
        dk.ok("run", "--rm", "-v", f"{volume}:/data", "busybox", "sh", "-c", "echo kept > /data/f")
        assert (
            dk.ok("run", "--rm", "-v", f"{volume}:/data", "busybox", "cat", "/data/f") == "kept\n"
        )
        dk.ok("volume", "rm", volume)
        assert volume not in dk.ok("volume", "ls", "--format", "{{.Name}}").split()

    def test_save_load_export_import_and_df(self, dk: DockerCLI) -> None:
        tag = f"t-saved-{uuid.uuid4().hex[:8]}:1"
        dk.images.append(tag)
        dk.ok("tag", "busybox", tag)
        archive = dk.raw("save", tag)
        dk.ok("rmi", tag)
        loaded = dk.raw("load", stdin=archive).decode()
        assert f"Loaded image: {tag}" in loaded, loaded
        name = dk.name("export")
        dk.ok("run", "--name", name, "busybox", "sh", "-c", "echo mine > /marker")
        tarball = dk.raw("export", name)
        imported = f"t-imported-{uuid.uuid4().hex[:8]}:1"
        dk.images.append(imported)
        dk.raw("import", "-", imported, stdin=tarball)
        assert dk.ok("run", "--rm", imported, "/bin/cat", "/marker") == "mine\n"
        df = dk.ok("system", "df")
        assert df.startswith("TYPE") and "Images" in df and "Containers" in df, df

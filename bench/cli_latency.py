#!/usr/bin/env python3
"""The docker CLI's latency against our engine and against dockerd, in one invocation.

Each sample is the wall time of one docker CLI 28.2.2 command, spawned as a user would:
`docker run --rm --network none busybox true` (the same work for both engines), `docker
run --rm busybox true` (each engine's default network: ours attaches a veth to its bridge,
dockerd here runs with `--bridge=none`, so it has less to do) and `docker ps`. Subjects:

- ours: the agent natively on this host (`python -m agent`, as `vmctl engine serve` runs
  it), in a private network namespace so its default bridge lives and dies with the run;
- dockerd: Debian's docker.io (20.10) with `--iptables=false --bridge=none`, its own
  data-root and exec-root (it starts its own containerd);
- vm (with --vm): our engine through a VM: `vmctl machine start bench-cli` (the image must
  be built or buildable), the CLI pointed at the machine's engine.sock.

Both native engines get the same busybox image (built from the host's busybox-static, as
the VM image builder builds it, and `docker load`ed). Rounds interleave the subjects in a
rotating order after warm-up runs, so host noise falls on all alike.

    python bench/cli_latency.py [--runs 30] [--warmup 3] [--vm] [--record]

Needs root, /usr/local/bin/docker (or docker on PATH), dockerd (apt-get install docker.io)
and /bin/busybox (busybox-static).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import report  # noqa: E402
from bench.vm_machine import bench_machine  # noqa: E402
from images import busybox as bb  # noqa: E402

HOST_BUSYBOX = Path("/bin/busybox")
COMMANDS = {
    "run --network none": ["run", "--rm", "--network", "none", "busybox", "true"],
    "run (default network)": ["run", "--rm", "busybox", "true"],
    "ps": ["ps"],
}
READY_TIMEOUT = 120.0


def docker_cli() -> str:
    for candidate in ("/usr/local/bin/docker", shutil.which("docker") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("the docker CLI is missing (/usr/local/bin/docker)")


@dataclass
class Subject:
    name: str
    socket: str
    process: subprocess.Popen[bytes] | None = None
    times: dict[str, list[float]] = field(default_factory=dict)

    def env(self, config_dir: str) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": config_dir}


def docker(cli: str, subject: Subject, config: str, args: list[str], **kw: object) -> float:
    """Run one docker command against ``subject``; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(  # type: ignore[call-overload]
        [cli, *args], env=subject.env(config), capture_output=True, timeout=300, **kw
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"{subject.name}: docker {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return seconds


def wait_ready(cli: str, subject: Subject, config: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if subject.process is not None and subject.process.poll() is not None:
            raise SystemExit(f"{subject.name} exited early:\n{log.read_text()[-3000:]}")
        probe = subprocess.run(
            [cli, "version", "--format", "{{.Server.Version}}"],
            env=subject.env(config),
            capture_output=True,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{subject.name} did not answer within {READY_TIMEOUT:.0f} s")


def start_ours(tmp: Path, tarball: Path | None) -> tuple[Subject, Path]:
    short = Path(tempfile.mkdtemp(prefix="cl"))  # unix socket paths are short
    sock = short / "engine.sock"
    log = tmp / "ours.log"
    argv = ["unshare", "-n", sys.executable, "-m", "agent", "--socket", str(sock)]
    argv += ["--root", str(tmp / "ours"), "--run-root", str(short / "run")]
    argv += ["--preload", str(tarball)] if tarball else []
    argv += ["--log-level", "WARNING"]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Subject("ours (native)", str(sock), process), short


def start_dockerd(tmp: Path) -> tuple[Subject, Path]:
    short = Path(tempfile.mkdtemp(prefix="cd"))
    sock = short / "docker.sock"
    log = tmp / "dockerd.log"
    argv = ["dockerd", "--iptables=false", "--bridge=none", "-H", f"unix://{sock}"]
    argv += ["--data-root", str(tmp / "dockerd"), "--exec-root", str(short / "exec")]
    argv += ["--pidfile", str(short / "dockerd.pid")]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return Subject("dockerd 20.10 (native)", str(sock), process), short


def stop(subject: Subject) -> None:
    if subject.process is None or subject.process.poll() is not None:
        return
    subject.process.send_signal(signal.SIGTERM)
    try:
        subject.process.wait(60)
    except subprocess.TimeoutExpired:
        subject.process.kill()
        subject.process.wait(10)


def unmount_under(path: Path) -> None:
    """Whatever an engine left mounted under its root (it should leave nothing)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(path))), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def table(subjects: list[Subject], anchor: Subject, runs: int) -> str:
    out = []
    for command in COMMANDS:
        out += [f"`docker {' '.join(COMMANDS[command])}`:", ""]
        out += ["| engine | median | all runs (ms) |", "| --- | --- | --- |"]
        for s in subjects:
            values = s.times[command]
            runs_text = ", ".join(f"{v * 1000:.0f}" for v in values)
            out.append(f"| {s.name} | {statistics.median(values) * 1000:.1f} ms | {runs_text} |")
        base = statistics.median(anchor.times[command])
        for s in subjects:
            if s is not anchor:
                ratio = statistics.median(s.times[command]) / base
                out.append(f"| ratio {s.name} / {anchor.name} | {ratio:.2f}× | |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="recorded runs of each command")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each first")
    parser.add_argument("--vm", action="store_true", help="also through a VM (bench-cli)")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("cli_latency.py runs engines natively: run it as root")
    if shutil.which("dockerd") is None:
        raise SystemExit("dockerd is missing: apt-get install docker.io (the anchor)")
    if not HOST_BUSYBOX.exists():
        raise SystemExit("/bin/busybox is missing: apt-get install busybox-static")
    cli = docker_cli()

    tmp = Path(tempfile.mkdtemp(prefix="vmctl-cli-", dir="/var/tmp"))
    config = tempfile.mkdtemp(prefix="vmctl-cli-config-")
    data = HOST_BUSYBOX.read_bytes()
    tarball = tmp / "busybox.tar"
    tarball.write_bytes(
        bb.build_container_image(
            data, bb.applet_paths(data, tmp / "applets"), "host", 1700000000
        ).tarball
    )
    subjects: list[Subject] = []
    shorts: list[Path] = []
    stack = contextlib.ExitStack()
    try:
        ours, short = start_ours(tmp, tarball)
        subjects.append(ours)
        shorts.append(short)
        dockerd, short = start_dockerd(tmp)
        subjects.append(dockerd)
        shorts.append(short)
        wait_ready(cli, ours, config, tmp / "ours.log")
        wait_ready(cli, dockerd, config, tmp / "dockerd.log")
        docker(cli, dockerd, config, ["load", "-i", str(tarball)])
        if args.vm:
            socket = stack.enter_context(bench_machine("bench-cli"))
            vm = Subject("ours (through the VM)", socket)
            wait_ready(cli, vm, config, tmp / "vm.log")
            subjects.append(vm)
        print(f"warm-up: {args.warmup} of each…", file=sys.stderr)
        for _ in range(args.warmup):
            for s in subjects:
                for command in COMMANDS.values():
                    docker(cli, s, config, command)
        for s in subjects:
            s.times = {c: [] for c in COMMANDS}
        print(f"{args.runs} interleaved rounds…", file=sys.stderr)
        for i in range(args.runs):
            shift = i % len(subjects)
            for s in subjects[shift:] + subjects[:shift]:
                for name, command in COMMANDS.items():
                    s.times[name].append(docker(cli, s, config, command))
    finally:
        for s in subjects:
            stop(s)
        stack.close()
        unmount_under(tmp)
        for path in (tmp, Path(config), *shorts):
            shutil.rmtree(path, ignore_errors=True)

    cpu = os.cpu_count()
    block = (
        f"### docker CLI latency ({time.strftime('%Y-%m-%d')}, {platform.node()}, {cpu} cores, "
        f"kernel {platform.release()}, {args.runs} runs of each, {args.warmup} warm-up)\n\n"
        + table(subjects, subjects[1], args.runs)
    )
    report(block, args.record)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

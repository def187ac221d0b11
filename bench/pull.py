#!/usr/bin/env python3
"""Pull throughput against skopeo, and a fully cached rebuild, through the VM.

A local registry (Debian's docker-registry on the host's 127.0.0.1) holds a generated
image of four layers of 32 MiB of random bytes each (incompressible, so the gzip blobs
weigh what the layers do: 128 MiB). Each round, alternating:

- ours: `docker pull localhost:PORT/bench/big:1` against the machine's engine (the guest's
  engine dials the host's loopback through QEMU's user-mode network, verifies every blob
  and unpacks the layers into its store), then an untimed `docker rmi`;
- skopeo: `skopeo copy docker://127.0.0.1:PORT/bench/big:1 oci:<fresh dir>` on the host
  (downloads and verifies the blobs into an OCI layout, nothing unpacked).

Throughput = compressed bytes of the layers / wall time. Then a 10-step Dockerfile is built
once through the VM (`DOCKER_BUILDKIT=0 docker build`), and rebuilt `--rounds` times with
nothing changed: each rebuild's wall time (every step from the cache).

    python bench/pull.py [--rounds 3] [--record]     (root: the registry helper uses nsenter)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_latency import start_ours, stop, unmount_under, wait_ready  # noqa: E402
from bench.results import report  # noqa: E402
from bench.vm_machine import bench_machine  # noqa: E402
from tests import registry_server  # noqa: E402

MACHINE = "bench-pull"
LAYERS, LAYER_MIB = 4, 32
DOCKERFILE = """\
FROM busybox
ARG GREETING=hello
ENV APP=/app
WORKDIR /app
COPY a.txt ./
COPY b.txt ./
RUN echo "$GREETING" > greeting
LABEL bench=pull
EXPOSE 8080
CMD ["cat", "/app/greeting"]
"""


def layer_tar(index: int) -> bytes:
    data = os.urandom(LAYER_MIB << 20)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/layer{index}.bin")
        info.size, info.mtime = len(data), 1700000000
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def image_archive(path: Path) -> None:
    """A `docker save`-style archive skopeo reads (docker-archive:)."""
    layers = [layer_tar(i) for i in range(LAYERS)]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(LAYERS)],
        }
    ).encode()
    manifest = [
        {
            "Config": "config.json",
            "RepoTags": ["bench/big:1"],
            "Layers": [f"{i}/layer.tar" for i in range(LAYERS)],
        }
    ]
    with tarfile.open(path, "w") as tar:
        members = {"config.json": config, "manifest.json": json.dumps(manifest).encode()}
        members.update({f"{i}/layer.tar": layer for i, layer in enumerate(layers)})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def docker(socket: str, *args: str, check: bool = True) -> float:
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}", "DOCKER_BUILDKIT": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def native_round_trips(work: Path, archive: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Ours natively against skopeo, both beside a registry in the agent's private network
    namespace: the pull code without the VM's emulated CPU. (ours, skopeo) wall times."""
    config = tempfile.mkdtemp(prefix="vmctl-pull-config-")
    ours, short = start_ours(work, None)
    assert ours.process is not None
    registry = None
    times: tuple[list[float], list[float]] = ([], [])
    try:
        wait_ready("docker", ours, config, work / "ours.log")
        subprocess.run(
            [*registry_server.in_netns(ours.process.pid), "ip", "link", "set", "lo", "up"],
            check=True,
        )
        registry = registry_server.start(ours.process.pid)
        source = f"127.0.0.1:{registry.port}/bench/big:1"
        copied = registry.skopeo(
            "copy", "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{source}"
        )
        if copied.returncode != 0:
            raise SystemExit(f"skopeo copy into the registry failed: {copied.stderr}")
        for i in range(rounds):
            docker(ours.socket, "rmi", source, check=False)
            times[0].append(docker(ours.socket, "pull", source))
            oci = work / f"native-oci-{i}"
            t0 = time.perf_counter()
            done = registry.skopeo(
                "copy", "--src-tls-verify=false", f"docker://{source}", f"oci:{oci}:big"
            )
            times[1].append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise SystemExit(f"skopeo copy failed: {done.stderr}")
            shutil.rmtree(oci, ignore_errors=True)
    finally:
        if registry is not None:
            registry.stop()
        stop(ours)
        unmount_under(work / "ours")
        shutil.rmtree(short, ignore_errors=True)
        shutil.rmtree(config, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pull.py starts the registry with nsenter: run it as root")
    missing = registry_server.tools_missing()
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (./install.sh installs them)")

    work = Path(tempfile.mkdtemp(prefix="vmctl-pull-", dir="/var/tmp"))
    registry = registry_server.start(os.getpid())  # in this (the host's) network namespace
    ours: list[float] = []
    skopeo: list[float] = []
    rebuilds: list[float] = []
    native: tuple[list[float], list[float]] = ([], [])
    try:
        print("generating and pushing the image…", file=sys.stderr)
        image_archive(work / "big.tar")
        source = f"127.0.0.1:{registry.port}/bench/big:1"
        subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false",
             f"docker-archive:{work / 'big.tar'}", f"docker://{source}"],
            check=True, capture_output=True,
        )  # fmt: skip
        manifest = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{source}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        size = sum(layer["size"] for layer in manifest["layers"])
        name = f"localhost:{registry.port}/bench/big:1"
        print("natively…", file=sys.stderr)
        native = native_round_trips(work, work / "big.tar", args.rounds)
        with bench_machine(MACHINE) as socket:
            for i in range(args.rounds):
                print(f"pull round {i + 1}/{args.rounds}…", file=sys.stderr)
                docker(socket, "rmi", name, check=False)
                ours.append(docker(socket, "pull", name))
                oci = work / f"oci-{i}"
                skopeo.append(
                    timed(
                        [
                            "skopeo",
                            "copy",
                            "--src-tls-verify=false",
                            f"docker://{source}",
                            f"oci:{oci}:big",
                        ]
                    )  # fmt: skip
                )
                shutil.rmtree(oci, ignore_errors=True)
            docker(socket, "rmi", name, check=False)

            context = work / "context"
            context.mkdir()
            (context / "Dockerfile").write_text(DOCKERFILE)
            (context / "a.txt").write_text("a\n")
            (context / "b.txt").write_text("b\n")
            docker(socket, "build", "-t", "bench/rebuild", str(context))  # fills the cache
            for _ in range(args.rounds):
                rebuilds.append(docker(socket, "build", "-t", "bench/rebuild", str(context)))
            docker(socket, "rmi", "bench/rebuild", check=False)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    mib = size / 2**20
    ours_med, skopeo_med = statistics.median(ours), statistics.median(skopeo)

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    lines = [
        f"### Pull and cached rebuild ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} cores, {args.rounds} rounds)",
        "",
        f"Image: {LAYERS} layers, {mib:.0f} MiB of gzip blobs.",
        "",
        "| measure | median | all runs (s) | throughput |",
        "| --- | --- | --- | --- |",
        f"| ours: `docker pull` through the VM | {ours_med:.2f} s | {runs(ours)} | "
        f"{mib / ours_med:.1f} MiB/s |",
        f"| skopeo copy to an OCI layout (host) | {skopeo_med:.2f} s | {runs(skopeo)} | "
        f"{mib / skopeo_med:.1f} MiB/s |",
        f"| throughput ratio ours (VM) / skopeo | {skopeo_med / ours_med:.2f}× | | |",
        f"| ours natively: `docker pull` (agent and registry in one network namespace) | "
        f"{statistics.median(native[0]):.2f} s | {runs(native[0])} | "
        f"{mib / statistics.median(native[0]):.1f} MiB/s |",
        f"| skopeo copy in the same namespace | {statistics.median(native[1]):.2f} s | "
        f"{runs(native[1])} | {mib / statistics.median(native[1]):.1f} MiB/s |",
        f"| throughput ratio ours (native) / skopeo | "
        f"{statistics.median(native[1]) / statistics.median(native[0]):.2f}× | | target ≥ 1× |",
        f"| fully cached rebuild of a 10-step Dockerfile through the VM | "
        f"{statistics.median(rebuilds):.2f} s | {runs(rebuilds)} | target ≤ 1 s |",
    ]
    block = "\n".join(lines) + "\n"
    report(block, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

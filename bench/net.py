#!/usr/bin/env python3
"""Published ports: the host reaching a container through 127.0.0.1, against the guest
reaching the same container straight at its bridge address, in one invocation.

A machine (`bench-net`, booted without the home share if it is not running) runs two
busybox containers: `httpd` serving a 13-byte page on container port 80, published as
host 127.0.0.1:18080, and a sink that reads and discards a TCP stream on port 9000,
published as 18081. The same client code (this file's CLIENT, plain sockets, one new
connection per request as busybox httpd closes each one) runs twice per round:

- on the host, against 127.0.0.1 (the published path: QEMU's user-mode forward, then the
  engine's DNAT in the guest);
- in the guest with the guest's python3 over `vmctl machine ssh`, against the
  container's address (no forward at all).

Reported: requests per second and median request latency over a fixed request count, and
the throughput of a 64 MiB stream into the sink. Rounds alternate the two sides.

    python bench/net.py [--rounds 3] [--requests 300] [--megabytes 64] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import report  # noqa: E402
from bench.vm_machine import bench_machine, vmctl  # noqa: E402

MACHINE = "bench-net"
HTTP_PORT, SINK_PORT = 18080, 18081

# Runs both on the host and (as `python3 -c`) in the guest: keep it standard-library
# only and self-contained. argv: mode host port count-or-megabytes; prints JSON.
CLIENT = r"""
import json, socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "http":
    request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
    latencies = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection((host, port)) as s:
            s.sendall(request)
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        if b" 200 " not in body.split(b"\r\n", 1)[0]:
            sys.exit("bad answer: %r" % body[:80])
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    latencies.sort()
    print(json.dumps({"rps": n / total, "median_ms": latencies[n // 2] * 1000}))
else:
    block = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    with socket.create_connection((host, port)) as s:
        for _ in range(n):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    print(json.dumps({"mib_s": n / (time.perf_counter() - t0)}))
"""


def docker(socket: str, *args: str) -> str:
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


def on_host(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def in_guest(*args: str) -> dict[str, float]:
    # several words after `--` are one command whose arguments pass through as given
    out = vmctl("machine", "ssh", MACHINE, "--", "python3", "-c", CLIENT, *args)
    return json.loads(out.strip().splitlines()[-1])


def start_containers(socket: str) -> str:
    """Start the server and the sink; the server's bridge address."""
    for name in ("bench-httpd", "bench-sink"):
        subprocess.run(
            ["docker", "rm", "-f", name],
            env={**os.environ, "DOCKER_HOST": f"unix://{socket}"},
            capture_output=True,
        )
    docker(
        socket, "run", "-d", "--name", "bench-httpd", "-p", f"{HTTP_PORT}:80", "busybox",
        "sh", "-c", "mkdir /www && echo hello world > /www/index.html && "
        "exec httpd -f -p 80 -h /www",
    )  # fmt: skip
    docker(
        socket, "run", "-d", "--name", "bench-sink", "-p", f"{SINK_PORT}:9000", "busybox",
        "sh", "-c", "while true; do nc -l -p 9000 >/dev/null; done",
    )  # fmt: skip
    return docker(
        socket,
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "bench-httpd",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {k: [] for k in ("hh", "gh", "hs", "gs")}
    with bench_machine(MACHINE) as socket:
        try:
            address = start_containers(socket)
            sink_address = docker(
                socket,
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "bench-sink",
            )
            time.sleep(1)  # httpd and nc listening
            on_host("http", "127.0.0.1", str(HTTP_PORT), "20")  # warm-up
            in_guest("http", address, "80", "20")
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds}…", file=sys.stderr)
                n, mb = str(args.requests), str(args.megabytes)
                results["hh"].append(on_host("http", "127.0.0.1", str(HTTP_PORT), n))
                results["gh"].append(in_guest("http", address, "80", n))
                results["hs"].append(on_host("stream", "127.0.0.1", str(SINK_PORT), mb))
                results["gs"].append(in_guest("stream", sink_address, "9000", mb))
        finally:
            subprocess.run(
                ["docker", "rm", "-f", "bench-httpd", "bench-sink"],
                env={**os.environ, "DOCKER_HOST": f"unix://{socket}"},
                capture_output=True,
            )

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    def runs(key: str, field: str) -> str:
        return ", ".join(f"{r[field]:.1f}" for r in results[key])

    rows = [
        ("requests/s", "rps", "hh", "gh"),
        ("median request latency (ms)", "median_ms", "hh", "gh"),
        (f"TCP throughput, {args.megabytes} MiB (MiB/s)", "mib_s", "hs", "gs"),
    ]
    lines = [
        f"### Published ports ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} cores, {args.rounds} rounds, {args.requests} requests each)",
        "",
        "| measure | host → 127.0.0.1 published port | guest → container directly | "
        "published / direct |",
        "| --- | --- | --- | --- |",
    ]
    for label, field, published, direct in rows:
        p, d = med(published, field), med(direct, field)
        lines.append(
            f"| {label} | {p:.1f} ({runs(published, field)}) | "
            f"{d:.1f} ({runs(direct, field)}) | {p / d:.2f}× |"
        )
    block = "\n".join(lines) + "\n"
    report(block, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real registry (Debian's docker-registry, distribution 2.8) for the registry tests.

It runs in a given network namespace (the native test agent's private one, where the agent
dials it at 127.0.0.1), listening on a free port of that namespace's loopback, with its
storage in a temporary directory. With ``tls=True`` it serves HTTPS with a certificate from
a throw-away CA (made by openssl) and asks for basic auth (htpasswd, bcrypt).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
USER, PASSWORD = "tester", "s3cret-pass"


def tools_missing() -> list[str]:
    needed = [REGISTRY, "skopeo", "openssl", "htpasswd", "nsenter"]
    return [tool for tool in needed if shutil.which(tool) is None]


def in_netns(pid: int) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def free_port(netns_pid: int) -> int:
    """A port nothing listens on inside the namespace (asked of the kernel there)."""
    script = "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    out = subprocess.run(
        [*in_netns(netns_pid), "python3", "-c", script], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1: (ca.crt, cert, key)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vmctl test CA",
        "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return ca_crt, crt, key


@dataclass
class Registry:
    netns_pid: int
    tls: bool = False
    port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vmctl-reg-")))
    ca: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def name(self) -> str:
        """How images name it: localhost for TLS (the certificate's name), else 127.0.0.1."""
        return f"{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    def start(self) -> None:
        self.port = free_port(self.netns_pid)
        self.storage.mkdir()
        lines = [
            "version: 0.1",
            "log: {level: warn}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.storage}}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.tls:
            self.ca, cert, key = make_ca(self.workdir)
            lines.append(f"  tls: {{certificate: {cert}, key: {key}}}")
            htpasswd = self.workdir / "htpasswd"
            out = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, check=True
            ).stdout
            htpasswd.write_bytes(out)
            lines += ["auth:", f"  htpasswd: {{realm: test-realm, path: {htpasswd}}}"]
        config = self.workdir / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - kept with the process
        self.process = subprocess.Popen(
            [*in_netns(self.netns_pid), REGISTRY, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        probe = f"import socket; socket.create_connection(('127.0.0.1', {self.port}), 1)"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the registry exited: {self.log()}")
            done = subprocess.run([*in_netns(self.netns_pid), "python3", "-c", probe],
                                  capture_output=True)  # fmt: skip
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the registry did not listen within 20 s: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def skopeo(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """skopeo in the registry's network namespace."""
        return subprocess.run(
            [*in_netns(self.netns_pid), "skopeo", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def tls_flags(self, direction: str = "") -> list[str]:
        """skopeo's --src-/--dest- options for this registry (no direction: inspect's)."""
        prefix = f"--{direction}-" if direction else "--"
        if not self.tls:
            return [f"{prefix}tls-verify=false"]
        assert self.ca is not None
        certs = self.workdir / "skopeo-certs"
        certs.mkdir(exist_ok=True)
        shutil.copy(self.ca, certs / "ca.crt")
        return [f"{prefix}cert-dir={certs}", f"{prefix}creds={USER}:{PASSWORD}"]

    def blob_file(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(netns_pid: int, tls: bool = False) -> Registry:
    registry = Registry(netns_pid, tls)
    try:
        registry.start()
    except BaseException:
        registry.stop()
        raise
    return registry


__all__ = ["PASSWORD", "USER", "Registry", "start", "tools_missing"]

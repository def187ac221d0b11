"""A private apt root under the cache dir: package lists and .deb downloads.

Using the host's apt state would need root, would depend on the host's sources.list and
would leave traces there. A private Dir::State/Dir::Cache/SourceList gives the same
result on any Debian or Ubuntu host that has apt and the Debian archive keyring. The
host's apt.conf.d is still read on purpose: it carries proxy settings a user may need.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from images.errors import ImageBuildError
from images.recipe import Recipe
from images.records import PackageRecord, iter_stanzas, newest_records

Progress = Callable[[str], None]


def require_apt() -> str:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ImageBuildError(
            "apt-get not found: the image builder needs a Debian or Ubuntu host",
            "build on Debian/Ubuntu (apt and debian-archive-keyring installed), "
            "or copy a built image from such a host",
        )
    return apt_get


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AptRoot:
    def __init__(self, cache_dir: Path, recipe: Recipe, progress: Progress) -> None:
        self.recipe = recipe
        self.progress = progress
        self.root = cache_dir / "apt"
        self.lists = self.root / "state" / "lists"
        self.archives = self.root / "cache" / "archives"
        self.sources = self.root / "sources.list"
        self.status = self.root / "state" / "status"
        self.stamp = self.root / "last-update"

    # -- configuration ---------------------------------------------------------------
    def _prepare(self) -> None:
        """Write the sources file and directories apt needs (before any apt-get run)."""
        if not Path(self.recipe.keyring).is_file():
            raise ImageBuildError(
                f"Debian archive keyring {self.recipe.keyring} not found",
                "apt-get install debian-archive-keyring",
            )
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        self.status.touch()
        lines = []
        for mirror in self.recipe.mirrors:
            for suite in mirror.suites:
                lines.append(
                    f"deb [arch={self.recipe.arch} signed-by={self.recipe.keyring}] "
                    f"{mirror.uri} {suite} {' '.join(self.recipe.components)}"
                )
        text = "\n".join(lines) + "\n"
        if not self.sources.exists() or self.sources.read_text() != text:
            self.sources.write_text(text)

    def _argv(self, *args: str) -> list[str]:
        options = {
            "Dir::State": str(self.root / "state"),
            "Dir::State::Lists": str(self.lists),
            "Dir::State::status": str(self.status),
            "Dir::Cache": str(self.root / "cache"),
            "Dir::Cache::Archives": str(self.archives),
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "APT::Architecture": self.recipe.arch,
            "APT::Architectures": self.recipe.arch,
            "Acquire::Languages": "none",
            # Plain lists are parsed directly, so hosts that keep them compressed
            # (Docker's Debian images set GzipIndexes) must not do so here.
            "Acquire::GzipIndexes": "false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
        }
        if os.geteuid() == 0:
            # apt drops to the _apt user for downloads, which cannot write into a cache
            # owned by root's umask; running the fetch as root avoids the warning.
            options["APT::Sandbox::User"] = "root"
        argv = [require_apt(), "-q"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        return argv + list(args)

    # -- lists -----------------------------------------------------------------------
    def _has_lists(self) -> bool:
        return any(self.lists.glob("*_Packages*"))

    def update(self, refresh: bool = False) -> None:
        """Run `apt-get update` when there are no lists yet, or on refresh.

        Never on its own schedule: new package versions change the image, and that should
        happen when the user asks (`vmctl image build --refresh`), not at some start.
        """
        if self._has_lists() and self.stamp.exists() and not refresh:
            return
        self._prepare()
        self.progress("updating package lists (apt-get update)")
        result = subprocess.run(
            self._argv("update"), capture_output=True, text=True, env=_apt_env()
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith(("E:", "W:"))]
        if result.returncode == 0 and not any(e.startswith("E:") for e in errors):
            self.stamp.touch()
            return
        detail = "\n".join(errors[-5:]) or result.stderr.strip()[-500:]
        if self._has_lists() and not refresh:
            # Offline rebuilds keep working on the lists from the last good update.
            self.progress(f"warning: apt-get update failed, using older lists:\n{detail}")
            return
        raise ImageBuildError(
            f"apt-get update failed (exit {result.returncode}):\n{detail}",
            "check network access to the Debian mirror in images/recipe.toml",
        )

    def lists_fingerprint(self) -> str:
        """Hash of the Release files: changes exactly when the package lists change."""
        digest = hashlib.sha256()
        for path in sorted(self.lists.glob("*Release")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def load_records(self) -> dict[str, PackageRecord]:
        texts = [_read_list(path) for path in sorted(self.lists.glob("*_Packages*"))]
        if not texts:
            raise ImageBuildError("no package lists found after apt-get update")
        return newest_records(
            (stanza for text in texts for stanza in iter_stanzas(text)), self.recipe.arch
        )

    # -- downloads -------------------------------------------------------------------
    def download(self, records: Iterable[PackageRecord], debs_dir: Path) -> dict[str, Path]:
        """Fetch .debs into `debs_dir` (reusing verified files); return name -> path."""
        debs_dir.mkdir(parents=True, exist_ok=True)
        wanted = {record.name: record for record in records}
        paths: dict[str, Path] = {}
        missing: list[PackageRecord] = []
        for record in wanted.values():
            path = debs_dir / Path(record.filename).name
            if path.exists() and sha256_file(path) == record.sha256:
                paths[record.name] = path
            else:
                missing.append(record)
        if not missing:
            return paths
        self._prepare()
        with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".download-") as tmp:
            argv = self._argv("download", *(f"{r.name}={r.version}" for r in missing))
            proc = subprocess.Popen(
                argv,
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_apt_env(),
            )
            assert proc.stdout is not None
            output: list[str] = []
            for line in proc.stdout:
                output.append(line.rstrip())
                if line.startswith("Get:"):
                    self.progress("  " + line.strip())
            if proc.wait() != 0:
                raise ImageBuildError(
                    f"apt-get download failed (exit {proc.returncode}):\n" + "\n".join(output[-5:]),
                    "run with refresh=True (--refresh) if the lists are stale",
                )
            by_hash = {sha256_file(p): p for p in Path(tmp).glob("*.deb")}
            for record in missing:
                found = by_hash.get(record.sha256)
                if found is None:
                    raise ImageBuildError(
                        f"downloaded {record.name} {record.version} does not match the "
                        f"SHA256 in the package lists ({record.sha256})",
                        "retry with --refresh; a mirror may be mid-update",
                    )
                target = debs_dir / Path(record.filename).name
                os.replace(found, target)
                paths[record.name] = target
        return paths


def _apt_env() -> dict[str, str]:
    # Stable, parseable English output whatever the user's locale.
    return dict(os.environ, LC_ALL="C.UTF-8", LANGUAGE="")


def _read_list(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    elif path.suffix == ".xz":
        data = lzma.decompress(data)
    elif path.suffix in (".lz4", ".zst"):
        tool = "lz4" if path.suffix == ".lz4" else "zstd"
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{path.name} is {tool}-compressed and {tool} is not installed")
        data = subprocess.run([tool, "-dc", str(path)], capture_output=True, check=True).stdout
    return data.decode("utf-8", errors="replace")

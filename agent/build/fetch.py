"""ADD of an http(s) URL: the file is downloaded first, so its content keys the cache.

As dockerd does: the file is named after the URL's last path component, gets mode 0600
and the server's Last-Modified time (when it sends one).
"""

from __future__ import annotations

import email.utils
import os
import posixpath
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from agent.build.context import Source
from agent.build.errors import BuildError

TIMEOUT = 60  # seconds without progress before a download fails


def file_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return posixpath.basename(path.rstrip("/")) or "__unnamed__"


def download(url: str, work: Path, keyword: str = "ADD") -> Source:
    """Fetch ``url`` into a fresh directory under ``work``; the file as a copy source."""
    directory = Path(tempfile.mkdtemp(dir=work, prefix="url-"))
    target = directory / file_name(url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
            modified = response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise BuildError(f"{keyword} failed: cannot download {url}: {reason}") from None
    os.chmod(target, 0o600)
    if modified:
        try:
            stamp = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(target, (stamp, stamp))
        except (TypeError, ValueError, OverflowError):
            pass
    return Source(str(target), target.name, False)

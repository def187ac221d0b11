"""Ed25519 key pairs and known_hosts entries for a machine's SSH link.

One format serves every consumer: the OpenSSH private key format is read by paramiko (the
host agent's client key), by the guest's sshd (its host key) and by the system ``ssh`` client.
Private keys are created with mode 0600 and published with an atomic rename, so a reader sees
either no key or a complete one, and the secret is never readable by others, even briefly.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from vmctl.atomic import write_atomic
from vmctl.errors import VmctlError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# cryptography is imported where a key is made or read: it costs every `vmctl` command
# ~20 ms at start-up, and most never touch a key.

KEY_TYPE = "ssh-ed25519"

# known_hosts treats ``* ? ! ,`` and whitespace as syntax; a plain name needs no escaping.
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def parse_public_line(line: str) -> tuple[str, bytes]:
    """Split ``"ssh-ed25519 AAAA… [comment]"`` into (key type, wire-format key blob).

    Raises ValueError when the line is not a well-formed OpenSSH public key.
    """
    fields = line.strip().split()
    if len(fields) < 2:
        raise ValueError("expected '<type> <base64> [comment]'")
    key_type, b64 = fields[0], fields[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"key data is not base64: {exc}") from None
    # The blob starts with its own type name; a mismatch means a corrupt or spliced line.
    if len(blob) < 4:
        raise ValueError("key data is truncated")
    (name_len,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + name_len] != key_type.encode():
        raise ValueError(f"key data does not describe a {key_type} key")
    return key_type, blob


def generate_keypair(private_path: Path, comment: str, *, overwrite: bool = False) -> str:
    """Create ``private_path`` (0600) and ``private_path.pub``; return the public line.

    Refuses to replace an existing key unless ``overwrite``: a silently regenerated host key
    would no longer match the pin held by the guest, and a client key no longer match the
    guest's authorized keys.
    """
    private_path = Path(private_path)
    if private_path.exists() and not overwrite:
        raise VmctlError(
            f"key {private_path} already exists",
            hint="remove it first if you really want a new key",
        )
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = _public_line(key.public_key(), comment)
    # Private first: if we die in between, the .pub can be rebuilt from the private key,
    # never the other way round.
    write_atomic(private_path, pem, 0o600, durable=True)
    write_atomic(_pub_path(private_path), line + "\n", 0o644, durable=True)
    return line


def read_public_line(path: Path) -> str:
    """Return the public line for a private key file or a ``.pub`` file.

    For a private key the line is derived from the key itself (the source of truth; a stale
    ``.pub`` beside it cannot mislead), keeping the ``.pub`` comment when the keys match.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VmctlError(
            f"cannot read key {path}: {exc.strerror or exc}",
            hint="recreate the machine to generate its keys again",
        ) from exc
    if path.suffix == ".pub":
        line = data.decode("utf-8", "replace").strip()
        _check_public(line, path)
        return line
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise VmctlError(
            f"{path} is not an unencrypted OpenSSH private key",
            hint="recreate the machine to generate its keys again",
            detail=str(exc),
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise VmctlError(f"{path} is not an Ed25519 key", hint="recreate the machine's keys")
    derived = _public_line(key.public_key(), "")
    return _with_pub_comment(derived, _pub_path(path))


def known_hosts_line(alias: str, public_line: str) -> str:
    """The known_hosts entry that pins ``public_line`` for ``ssh -o HostKeyAlias=<alias>``."""
    if not _ALIAS_RE.match(alias):
        raise ValueError(f"host key alias {alias!r} has characters known_hosts treats as syntax")
    key_type, blob = parse_public_line(public_line)
    return f"{alias} {key_type} {base64.b64encode(blob).decode()}"


def write_known_hosts(path: Path, alias: str, public_line: str) -> None:
    """Write a known_hosts file holding only the pinned entry (replacing any old file)."""
    write_atomic(Path(path), known_hosts_line(alias, public_line) + "\n", 0o600, durable=True)


def _public_line(public: Ed25519PublicKey, comment: str) -> str:
    from cryptography.hazmat.primitives import serialization

    body = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    comment = " ".join(comment.split())  # a newline would end the line early
    return f"{body} {comment}" if comment else body


def _with_pub_comment(derived: str, pub_path: Path) -> str:
    try:
        fields = pub_path.read_text().split(maxsplit=2)
    except (OSError, UnicodeDecodeError):
        return derived
    if len(fields) == 3 and fields[:2] == derived.split()[:2]:
        return f"{derived} {fields[2].strip()}"
    return derived


def _check_public(line: str, path: Path) -> None:
    try:
        parse_public_line(line)
    except ValueError as exc:
        raise VmctlError(
            f"{path} does not hold an OpenSSH public key",
            hint="recreate the machine to generate its keys again",
            detail=str(exc),
        ) from exc


def _pub_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")

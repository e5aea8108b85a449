"""Till secrets: minted, sealed for storage, and opened again to check a signature.

A till signs with HMAC-SHA256 under its secret, so the server needs the secret itself to check
a signature: a one-way hash (as for passwords) cannot verify an HMAC. The secret is therefore
*sealed*: encrypted and authenticated under a key derived from the server's seal key, so a
copy of the database alone does not let anyone sign as a till. A SHA-256 digest identifies a
secret in lists and logs without revealing it.

The cipher uses only the standard library (no crypto package is locked): HMAC-SHA256 as a
pseudo-random function in counter mode for the keystream, encrypt-then-MAC with a separate
HMAC key over the version, nonce and ciphertext. Both keys come from the seal key with
distinct labels.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["SealError", "Sealer", "digest", "new_key_id", "new_secret"]

_VERSION = b"\x01"
_NONCE_BYTES = 16
_TAG_BYTES = 32


class SealError(ValueError):
    """A sealed secret that was not sealed with this key, or was altered."""


def new_secret() -> str:
    """A till's signing secret: 32 random bytes, URL-safe, with a recognisable prefix."""
    return "rps_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def new_key_id() -> str:
    return "rpk_" + secrets.token_hex(12)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Sealer:
    """Seals and opens secrets under one server key."""

    def __init__(self, seal_key: str) -> None:
        root = seal_key.encode()
        self._enc = hmac.new(root, b"regulars pos seal: encryption", hashlib.sha256).digest()
        self._mac = hmac.new(root, b"regulars pos seal: authentication", hashlib.sha256).digest()

    def _keystream(self, nonce: bytes, length: int) -> bytes:
        blocks = []
        for counter in range(-(-length // 32)):
            block = nonce + counter.to_bytes(4, "big")
            blocks.append(hmac.new(self._enc, block, hashlib.sha256).digest())
        return b"".join(blocks)[:length]

    def seal(self, secret: str) -> bytes:
        plain = secret.encode()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        cipher = bytes(
            a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True)
        )
        body = _VERSION + nonce + cipher
        return body + hmac.new(self._mac, body, hashlib.sha256).digest()

    def open(self, sealed: bytes) -> str:
        """The secret; SealError if ``sealed`` was altered or sealed under another key."""
        body, tag = sealed[:-_TAG_BYTES], sealed[-_TAG_BYTES:]
        expected = hmac.new(self._mac, body, hashlib.sha256).digest()
        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or not hmac.compare_digest(tag, expected):
            raise SealError("the sealed secret does not open with this server's seal key")
        if body[:1] != _VERSION:
            raise SealError("unknown seal version")
        nonce, cipher = body[1 : 1 + _NONCE_BYTES], body[1 + _NONCE_BYTES :]
        stream = self._keystream(nonce, len(cipher))
        return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()

"""Till secrets: minted, sealed for storage, and opened again to check a signature.

A till signs with HMAC-SHA256 under its secret, so the server needs the secret itself to check
a signature: a one-way hash (as for passwords) cannot verify an HMAC. The secret is therefore
*sealed*: encrypted and authenticated under a key derived from the server's seal key, so a
copy of the database alone does not let anyone sign as a till. A SHA-256 digest identifies a
secret in lists and logs without revealing it.

Sealing is AES-256-GCM from ``cryptography`` (format 2: version, 12-byte nonce, ciphertext
and tag; the version byte is authenticated too), under a key derived with HKDF-SHA256. Keys
made before (format 1, a hand-made HMAC-SHA256 stream cipher with encrypt-then-MAC) still
open; a key rotated away takes its format 1 secret with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "Sealer", "digest", "new_key_id", "new_secret"]

_AES_GCM = b"\x02"
_AES_NONCE_BYTES = 12
_LEGACY = b"\x01"
_LEGACY_NONCE_BYTES = 16
_LEGACY_TAG_BYTES = 32


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
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"regulars pos seal: aes-256-gcm")
        self._aead = AESGCM(key.derive(root))
        self._legacy = _LegacyOpener(root)

    def seal(self, secret: str) -> bytes:
        nonce = secrets.token_bytes(_AES_NONCE_BYTES)
        return _AES_GCM + nonce + self._aead.encrypt(nonce, secret.encode(), _AES_GCM)

    def open(self, sealed: bytes) -> str:
        """The secret; SealError if ``sealed`` was altered or sealed under another key."""
        version = sealed[:1]
        if version == _LEGACY:
            return self._legacy.open(sealed)
        if version != _AES_GCM:
            raise SealError("unknown seal version")
        nonce, cipher = sealed[1 : 1 + _AES_NONCE_BYTES], sealed[1 + _AES_NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, cipher, _AES_GCM).decode()
        except (InvalidTag, ValueError):  # ValueError: a nonce cut short
            raise SealError("the sealed secret does not open with this server's seal key") from None


class _LegacyOpener:
    """Opens format 1 (sealed before AES-GCM): an HMAC-SHA256 keystream, encrypt-then-MAC.
    Only opens: nothing is sealed this way any more."""

    def __init__(self, root: bytes) -> None:
        self._enc = hmac.new(root, b"regulars pos seal: encryption", hashlib.sha256).digest()
        self._mac = hmac.new(root, b"regulars pos seal: authentication", hashlib.sha256).digest()

    def open(self, sealed: bytes) -> str:
        body, tag = sealed[:-_LEGACY_TAG_BYTES], sealed[-_LEGACY_TAG_BYTES:]
        expected = hmac.new(self._mac, body, hashlib.sha256).digest()
        too_short = len(sealed) < 1 + _LEGACY_NONCE_BYTES + _LEGACY_TAG_BYTES
        if too_short or not hmac.compare_digest(tag, expected):
            raise SealError("the sealed secret does not open with this server's seal key")
        nonce, cipher = body[1 : 1 + _LEGACY_NONCE_BYTES], body[1 + _LEGACY_NONCE_BYTES :]
        blocks = (
            hmac.new(self._enc, nonce + n.to_bytes(4, "big"), hashlib.sha256).digest()
            for n in range(-(-len(cipher) // 32))
        )
        stream = b"".join(blocks)[: len(cipher)]
        return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()

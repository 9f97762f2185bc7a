"""Sealed cache values: what a tier stores is bound to its block key and cannot be planted or read.

A tier that others can reach (Redis, shared by every node) or steal (the
local disk) stores each block sealed:

``mac``
    HMAC-SHA256 under the nodes' shared secret over the block key and the
    payload. The block key is a digest of the ObjectRef identity and the
    block's index, so a value is valid only for the bytes it claims to be.
    Anyone without the secret can neither plant a value that is served nor
    move one to another key.
``aead``
    AES-256-GCM under a data key (from a file or the environment, never
    stored beside the cache), the block key as associated data: the same
    binding, and the payload unreadable without the key.

A value that fails to open is a miss (the caller counts and logs it) and is
fetched again; it is never served. A changed key or secret therefore makes
the old cache unreadable, not an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from tierfs.config import Settings
from tierfs.errors import ConfigError
from tierfs.secrecy import read_secret

_MAC, _AEAD = b"M", b"A"  # the first byte of a sealed value says how it was sealed
_MAC_SIZE, _NONCE_SIZE = 32, 12


class Sealer:
    """Seal and open values for one tier: AES-GCM with a data key, else HMAC with the shared secret."""

    def __init__(self, secret: bytes = b"", data_key: bytes = b""):
        if not secret and not data_key:
            raise ValueError("a Sealer needs a secret or a data key")
        self._mac_key = hashlib.sha256(b"tierfs block mac\0" + secret).digest() if secret else b""
        self._aead = None
        if data_key:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._key = hashlib.sha256(b"tierfs block key\0" + data_key).digest()
            self._aead = AESGCM(self._key)

    @property
    def key_id(self) -> str:
        """Names the key without revealing it (a one-way digest): a cache written under another key is told apart."""
        if self._aead is None:
            return "mac"
        return "aes-gcm " + hashlib.sha256(b"tierfs key id\0" + self._key).hexdigest()[:16]

    @property
    def encrypts(self) -> bool:
        return self._aead is not None

    def seal(self, key: bytes, data: bytes) -> bytes:
        if self._aead is not None:
            nonce = os.urandom(_NONCE_SIZE)
            return _AEAD + nonce + self._aead.encrypt(nonce, data, key)
        return _MAC + hmac.new(self._mac_key, key + data, hashlib.sha256).digest() + data

    def open(self, key: bytes, raw: bytes) -> bytes | None:
        """The payload, or None if ``raw`` was not sealed for ``key`` by this secret or key."""
        kind = raw[:1]
        if kind == _AEAD and self._aead is not None and len(raw) > 1 + _NONCE_SIZE:
            from cryptography.exceptions import InvalidTag

            view = memoryview(raw)  # (no copy of a 4 MiB block before it is decrypted)
            try:
                return self._aead.decrypt(raw[1:1 + _NONCE_SIZE], view[1 + _NONCE_SIZE:], key)
            except InvalidTag:
                return None
        if kind == _MAC and self._mac_key and self._aead is None and len(raw) >= 1 + _MAC_SIZE:
            data = raw[1 + _MAC_SIZE:]
            want = hmac.new(self._mac_key, key + data, hashlib.sha256).digest()
            return data if hmac.compare_digest(want, raw[1:1 + _MAC_SIZE]) else None
        return None  # sealed another way (or not at all): never trusted


def cache_key(settings: Settings, cache_dir: Path) -> bytes:
    """The key that encrypts disk blocks and Redis values (b'': none), from its file or TIERFS_CACHE_KEY.

    A key file inside the cache dir it protects is refused: whoever took the disk would have the key too.
    """
    if settings.cache_key_file:
        where = Path(settings.cache_key_file).resolve()
        inside = cache_dir.resolve()
        if where == inside or inside in where.parents:
            raise ConfigError(f"[cache] encryption_key_file {settings.cache_key_file} is inside the cache dir "
                              f"{inside}: whoever takes the disk would have the key too; keep it elsewhere "
                              "(/etc/tierfs/cache.key, mode 0600)")
    return read_secret("", settings.cache_key_file, "TIERFS_CACHE_KEY", "[cache] encryption_key_file",
                       settings.allow_readable_secrets)

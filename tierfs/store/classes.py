"""Storage classes: list every object with its class, change one object's class, restore one.

What each provider does is its backend's business (``local.py``: an
extended attribute; ``s3.py``: a self-copy with the new class; ``azure.py``:
the access tier set in place; ``gcs.py``: left to the bucket's own lifecycle
rules). In a versioned bucket, a self-copy makes a new version; the version
it was copied from is deleted afterwards, unless a snapshot pins it, so a
transition never leaves a second billed copy behind.
"""

from __future__ import annotations

from collections.abc import Iterator

from tierfs.errors import UserError
from tierfs.store.objects import Entry, ObjectStore


def provider(store: ObjectStore) -> str:
    return store.provider


def objects_with_classes(store: ObjectStore) -> Iterator[Entry]:
    """Every object of the lake (name relative to the lake) with its storage class ('' where unknown)."""
    yield from store.backend.objects_with_classes(store.walk_files(""))


def set_class(store: ObjectStore, key: str, storage_class: str, pinned: frozenset[tuple[str, str]] = frozenset(),
              etag: str = "", listed_version: str = "") -> bool:
    """Move ``key`` to ``storage_class``; ``pinned`` are (key, version) pairs that snapshots read.

    ``etag`` and ``listed_version`` are the object as listed: S3 then copies
    only if the object still has that ETag. False when the object changed or
    went since it was listed.
    """
    return store.backend.set_class(key, storage_class, pinned, etag, listed_version)


def restore(store: ObjectStore, key: str, days: int = 7) -> str:
    """Make an archived object readable again; returns what was done, in a sentence.

    S3 makes a temporary copy readable for ``days`` (the object keeps its class);
    Azure rehydrates the blob to Hot; a local lake moves it back to STANDARD.
    GCS reads its ARCHIVE class directly, so nothing needs restoring there.
    """
    if not store.exists(key):
        raise UserError(f"{key} is not in {store.url}")
    return store.backend.restore(key, days)


def delete_version(store: ObjectStore, key: str, version: str) -> None:
    """Delete one noncurrent version (S3)."""
    store.backend.delete_version(key, version)

"""Storage classes, per provider: list every object with its class, change one object's class.

- A local lake emulates classes in an extended attribute (``user.tierfs.class``).
- S3 copies the object onto itself with the new class.
- GCS classes are left to the bucket's own lifecycle rules (`tierfs
  lifecycle export` prints them); tierfs does not rewrite GCS objects.
- Azure sets the blob's access tier (Hot, Cool, Cold, Archive) in place.

In a versioned bucket, a self-copy makes a new version. The version it was
copied from is deleted afterwards, unless a snapshot pins it, so a transition
never leaves a second billed copy behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fsspec.asyn import sync

from tierfs.errors import UserError
from tierfs.refs import ObjectRef
from tierfs.store.objects import ARCHIVE_CLASSES, Entry, ObjectStore, error_code, mtime_ns_of

log = logging.getLogger(__name__)

#: fsspec filesystem class -> provider name used by rules and prices.
_PROVIDERS = {"S3FileSystem": "s3", "GCSFileSystem": "gcs", "AzureBlobFileSystem": "azure", "LocalFileSystem": "local"}


def provider(store: ObjectStore) -> str:
    return _PROVIDERS.get(type(store.fs).__name__, type(store.fs).__name__)


def objects_with_classes(store: ObjectStore) -> Iterator[Entry]:
    """Every object of the lake (name relative to the lake) with its storage class ('' where unknown)."""
    kind = provider(store)
    if kind == "azure":
        yield from _azure_blobs(store)
        return
    for e in store.walk_files(""):
        if kind == "local":
            e = Entry(e.name, False, e.size, e.mtime_ns, e.ref, store.local_class(e.name))
        yield e


def set_class(store: ObjectStore, key: str, storage_class: str, pinned: frozenset[tuple[str, str]] = frozenset(),
              etag: str = "", listed_version: str = "") -> bool:
    """Move ``key`` to ``storage_class``; ``pinned`` are (key, version) pairs that snapshots read.

    ``etag`` and ``listed_version`` are the object as listed: S3 then copies
    only if the object still has that ETag. False when the object changed or
    went since it was listed.
    """
    kind = provider(store)
    if kind == "local":
        store.set_local_class(key, storage_class)
    elif kind == "s3":
        return _s3_set_class(store, key, storage_class, pinned, etag, listed_version)
    elif kind == "azure":
        _azure_set_tier(store, key, storage_class)
    else:
        raise UserError(f"{store.url} has no storage classes to change (a {kind} store)")
    return True


def restore(store: ObjectStore, key: str, days: int = 7) -> str:
    """Make an archived object readable again; returns what was done, in a sentence.

    S3 makes a temporary copy readable for ``days`` (the object keeps its class);
    Azure rehydrates the blob to Hot; a local lake moves it back to STANDARD.
    GCS reads its ARCHIVE class directly, so nothing needs restoring there.
    """
    kind = provider(store)
    if not store.exists(key):
        raise UserError(f"{key} is not in {store.url}")
    if kind == "local":
        current = store.local_class(key)
        if current not in ARCHIVE_CLASSES:
            raise UserError(f"{key} is not archived (class {current or 'STANDARD'}); it can be read as it is")
        store.set_local_class(key, "STANDARD")
        return f"{key} is readable again (class STANDARD)"
    if kind == "azure":
        tier, status = _azure_tier(store, key)
        if status:
            return f"{key}: a rehydration is already in progress ({status})"
        if tier != "Archive":
            raise UserError(f"{key} is not archived (tier {tier}); it can be read as it is")
        _azure_set_tier(store, key, "Hot")
        return f"{key}: rehydration to Hot started (Azure: up to 15 hours at standard priority)"
    if kind == "s3":
        bucket, _, name = store.full(key).partition("/")
        request = {"Days": days, "GlacierJobParameters": {"Tier": "Standard"}}
        try:
            store.call(lambda: store.fs.call_s3("restore_object", Bucket=bucket, Key=name, RestoreRequest=request),
                       f"restore {key}")
        except OSError as exc:
            code = error_code(exc)
            if code == "RestoreAlreadyInProgress":
                return f"{key}: a restore is already in progress"
            if code == "InvalidObjectState":
                raise UserError(f"{key} is not in an archive class; it can be read as it is") from None
            raise UserError(f"{store.url} refused to restore {key}: {exc.strerror or exc}") from None
        return (f"{key}: restore requested (S3 standard retrieval: 3-5 hours from GLACIER, up to 12 from "
                f"DEEP_ARCHIVE); the copy stays readable for {days} days")
    if kind == "gcs":
        return f"{key}: GCS reads ARCHIVE objects directly; nothing to restore"
    raise UserError(f"{store.url} has no archive classes (a {kind} store)")


def delete_version(store: ObjectStore, key: str, version: str) -> None:
    """Delete one noncurrent S3 version."""
    kind = provider(store)
    if kind == "s3":
        bucket, _, name = store.full(key).partition("/")
        store.call(lambda: store.fs.call_s3("delete_object", Bucket=bucket, Key=name, VersionId=version),
                   f"delete {key} version {version}")
    else:
        raise UserError(f"{store.url} keeps no object versions to delete")


# -- S3 -----------------------------------------------------------------------
#: S3 servers that refuse a self-copy under MetadataDirective=COPY even when the class changes (SeaweedFS).
_SELF_COPY_REFUSED = "self-copy-needs-replace"


def _s3_set_class(store: ObjectStore, key: str, storage_class: str, pinned: frozenset[tuple[str, str]],
                  etag: str, listed_version: str) -> bool:
    """One CopyObject onto itself with the new class, If-Match the listed ETag.

    Where the server refuses that, a HEAD first and a copy that REPLACEs the
    metadata with the object's own. Either way the bytes copied are those of
    the version seen, so in a versioned bucket that version may go afterwards.
    """
    bucket, _, name = store.full(key).partition("/")
    source = {"Bucket": bucket, "Key": name}

    def copy() -> tuple[str, dict[str, Any]] | None:
        try:
            if etag and _SELF_COPY_REFUSED not in store.quirks:
                try:
                    out: dict[str, Any] = store.fs.call_s3(
                        "copy_object", Bucket=bucket, Key=name, CopySource=source, CopySourceIfMatch=f'"{etag}"',
                        StorageClass=storage_class, MetadataDirective="COPY")
                    return "", out
                except OSError as exc:
                    if error_code(exc) != "InvalidRequest":
                        raise
                    store.quirks.add(_SELF_COPY_REFUSED)
            head = store.fs.call_s3("head_object", Bucket=bucket, Key=name)
            if etag and head["ETag"].strip('"') != etag:
                return None
            extra = {"ContentType": head["ContentType"]} if head.get("ContentType") else {}
            out = store.fs.call_s3(
                "copy_object", Bucket=bucket, Key=name, CopySource=source, CopySourceIfMatch=head["ETag"],
                StorageClass=storage_class, MetadataDirective="REPLACE", Metadata=head.get("Metadata", {}), **extra)
            return str(head.get("VersionId") or ""), out
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or error_code(exc) == "PreconditionFailed":
                return None  # changed or gone since it was listed
            raise

    done = store.call(copy, f"transition {key}")
    if done is None:
        log.info("%s changed since it was listed; left for the next run", key)
        return False
    seen, out = done
    if not seen and str(out.get("CopyObjectResult", {}).get("ETag", "")).strip('"') == etag:
        seen = listed_version  # the copy holds the listed bytes (for servers that do not name the source)
    old = str(out.get("CopySourceVersionId") or seen)
    new = str(out.get("VersionId") or "")
    if old not in ("", "null") and new and old != new and (key, old) not in pinned:
        delete_version(store, key, old)
    return True


# -- Azure --------------------------------------------------------------------
def _container(store: ObjectStore, key: str) -> tuple[str, str]:
    container, _, name = store.full(key).partition("/")
    return container, name


def _azure_set_tier(store: ObjectStore, key: str, tier: str) -> None:
    fs = store.fs
    container, name = _container(store, key)

    async def set_tier() -> None:
        async with fs.service_client.get_blob_client(container, name) as blob:
            # Only a move out of Archive reads the priority; Standard is the cheap one (hours).
            await blob.set_standard_blob_tier(tier, rehydrate_priority="Standard")

    store.call(lambda: sync(fs.loop, set_tier), f"set tier of {key}")


def _azure_tier(store: ObjectStore, key: str) -> tuple[str, str]:
    """The blob's access tier and its archive status (a rehydration under way, or '')."""
    fs = store.fs
    container, name = _container(store, key)

    async def get() -> tuple[str, str]:
        async with fs.service_client.get_blob_client(container, name) as blob:
            props = await blob.get_blob_properties()
            return str(props.blob_tier or ""), str(props.archive_status or "")

    out: tuple[str, str] = store.call(lambda: sync(fs.loop, get), f"stat {key}")
    return out


def _azure_blobs(store: ObjectStore) -> Iterator[Entry]:
    """Every blob under the lake with its access tier, one listing page in memory at a time.

    adlfs' listings carry no access tier, so this lists through the Azure client.
    """
    fs = store.fs
    container, _, prefix = store.root.partition("/")
    base = f"{prefix}/" if prefix else ""

    async def page(token: str | None) -> tuple[list[Any], str | None]:
        async with fs.service_client.get_container_client(container) as cc:
            pages = cc.list_blobs(name_starts_with=base or None, include=["metadata"],
                                  results_per_page=5000).by_page(continuation_token=token)
            blobs = [b async for b in await pages.__anext__()]
            return blobs, pages.continuation_token

    token: str | None = None
    while True:
        blobs, token = store.call(lambda t=token: sync(fs.loop, page, t), f"list {store.url}")
        for b in blobs:
            if b.name.endswith("/") or (b.metadata or {}).get("is_directory") == "true":
                continue  # adlfs' directory markers
            rel = b.name[len(base):]
            mtime_ns = mtime_ns_of({"last_modified": b.last_modified})
            etag = str(b.etag or "").strip('"')
            yield Entry(rel, False, int(b.size or 0), mtime_ns, ObjectRef(rel, int(b.size or 0), etag),
                        str(b.blob_tier or ""))
        if not token:
            return

"""Azure Blob Storage (and Azurite): adlfs for listings, the Azure SDK where a read or a put needs more.

A ranged read goes to the blob client itself with ``If-Match`` the ETag the
listing gave (adlfs' reads take no condition), so a blob rewritten upstream
is a precondition failure, never other bytes; an upload's identity is the
ETag the upload answered with. Access tiers (Hot, Cool, Cold, Archive) are
set in place; an Archive blob must be rehydrated before it is read.

The SDK runs on adlfs' own event loop (fsspec's IO thread), each call bound
by the call's deadline; obstore's Azure client (GIL-free) against Azurite has
not been tried yet.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from tierfs.errors import Archived, UserError
from tierfs.refs import ObjectRef
from tierfs.store.backend import (
    Backend,
    BucketKeys,
    Changed,
    Entry,
    expected_etag,
    mtime_ns_of,
    require_identity,
)
from tierfs.store.local import archived_message


class AzureBackend(BucketKeys, Backend):
    provider: ClassVar[str] = "azure"
    counts_characters: ClassVar[bool] = True  # a blob name is at most 1,024 characters

    def _blob(self, key: str) -> Any:
        container, _, name = self.full(key).partition("/")
        return self.fs.service_client.get_blob_client(container, name)

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def get() -> bytes:
            async with self._blob(ref.key) as blob:
                kwargs: dict[str, Any] = {"offset": start, "length": end - start}
                if expected_etag(ref):
                    kwargs.update(etag=f'"{ref.etag}"', match_condition=MatchConditions.IfNotModified)
                if ref.version and self.version_aware:
                    kwargs["version_id"] = ref.version
                stream = await blob.download_blob(**kwargs)
                data: bytes = await stream.readall()
                return data

        try:
            data: bytes = self.run(get)
        except ResourceModifiedError:
            raise Changed(f"{ref.key} changed upstream (ETag is no longer {ref.etag})") from None
        except ResourceNotFoundError:
            raise FileNotFoundError(ref.key) from None
        return data

    def archived(self, ref: ObjectRef, exc: BaseException | None) -> Archived | None:
        seen: BaseException | None = exc
        for _ in range(8):
            if seen is None:
                break
            if getattr(seen, "error_code", None) == "BlobArchived":
                return Archived(archived_message(self.url, ref.key, "Archive tier"))
            seen = seen.__cause__ or seen.__context__
        return None

    # -- writes ----------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        size = os.stat(local).st_size
        with open(local, "rb") as fh:
            return self._upload(key, fh, size)

    def put_bytes(self, key: str, data: bytes) -> Entry:
        return self._upload(key, data, len(data))

    def _upload(self, key: str, body: Any, size: int) -> Entry:
        """One upload_blob (block blob: committed whole at its end); the identity is its answer."""

        async def put() -> dict[str, Any]:
            async with self._blob(key) as blob:
                out: dict[str, Any] = await blob.upload_blob(body, length=size, overwrite=True, max_concurrency=4)
                return out

        # An upload takes as long as its bytes need: 1 s per MiB on top of one attempt's time.
        out = self.run_for(self.attempt_timeout + size / (1 << 20), put)
        self.fs.invalidate_cache(self.full(key))
        etag = str(out.get("etag") or "").strip('"')
        mtime_ns = mtime_ns_of({"last_modified": out.get("last_modified")})
        version = str(out.get("version_id") or "") if self.version_aware else ""
        return Entry(posixpath.basename(key), False, size, mtime_ns, ObjectRef(key, size, etag, version))

    def delete_if(self, key: str, ref: ObjectRef) -> bool:
        """delete_blob If-Match the ETag evaluated: the service itself refuses (412) if the blob is another now."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        require_identity(ref)
        if not ref.etag:
            return super().delete_if(key, ref)

        async def delete() -> None:
            async with self._blob(key) as blob:
                await blob.delete_blob(etag=f'"{ref.etag}"', match_condition=MatchConditions.IfNotModified)

        try:
            self.run(delete)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        finally:
            self.fs.invalidate_cache(self.full(key))
        return True

    def copy_ref(self, ref: ObjectRef, dst: str) -> Entry:
        """Copy Blob, server side, If-Match the source's ETag: exactly those bytes, or ConditionNotMet (Changed).

        A copy inside one account is usually done when the call returns; one
        still pending is polled until it is, within the call's deadline.
        """
        import asyncio

        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def copy() -> Any:
            async with self._blob(dst) as blob:
                url = self._blob(ref.key).url
                if ref.version and self.version_aware:
                    url += f"?versionid={ref.version}"
                kwargs: dict[str, Any] = {}
                if ref.etag:
                    kwargs.update(source_etag=f'"{ref.etag}"', source_match_condition=MatchConditions.IfNotModified)
                out = await blob.start_copy_from_url(url, **kwargs)
                status = out.get("copy_status")
                while status == "pending":
                    await asyncio.sleep(0.1)
                    out = await blob.get_blob_properties()
                    status = out.copy.status
                if status != "success":
                    raise OSError(f"copy of {ref.key} to {dst} ended {status}")
                return out

        try:
            out = self.run_for(self.seconds_for(ref.size), copy)
        except ResourceModifiedError:
            raise Changed(f"{ref.key} changed upstream (ETag is no longer {ref.etag})") from None
        except ResourceNotFoundError:
            raise FileNotFoundError(ref.key) from None
        self.fs.invalidate_cache(self.full(dst))
        etag = str(out.get("etag") or "").strip('"')
        version = str(out.get("version_id") or "") if self.version_aware else ""
        return Entry(posixpath.basename(dst), False, ref.size, mtime_ns_of({"last_modified": out.get("last_modified")}),
                     ObjectRef(dst, ref.size, etag, version))

    def remove_dir(self, rel: str) -> None:
        """Delete the directory's marker blob: ``rel/``, or ``rel`` flagged as a folder (adlfs, Azure tools)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async def remove(key: str, only_folders: bool) -> None:
            async with self._blob(key) as blob:
                try:
                    props = await blob.get_blob_properties()
                except ResourceNotFoundError:
                    return
                meta = {k.lower(): v for k, v in (props.metadata or {}).items()}
                if only_folders and "true" not in (meta.get("is_directory"), meta.get("hdi_isfolder")):
                    return  # a file of that name, not a marker
                try:  # the blob just looked at, not one written since
                    await blob.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
                except (ResourceModifiedError, ResourceNotFoundError):
                    return

        path = rel.strip("/")
        self.run(remove, f"{path}/", False)
        self.run(remove, path, True)
        self.fs.invalidate_cache(self.full(rel))

    # -- access tiers -------------------------------------------------------------
    def _set_tier(self, key: str, tier: str) -> None:
        async def set_tier() -> None:
            async with self._blob(key) as blob:
                # Only a move out of Archive reads the priority; Standard is the cheap one (hours).
                await blob.set_standard_blob_tier(tier, rehydrate_priority="Standard")

        self.call(lambda: self.run(set_tier), f"set tier of {key}")

    def _tier(self, key: str) -> tuple[str, str]:
        """The blob's access tier and its archive status (a rehydration under way, or '')."""

        async def get() -> tuple[str, str]:
            async with self._blob(key) as blob:
                props = await blob.get_blob_properties()
                return str(props.blob_tier or ""), str(props.archive_status or "")

        out: tuple[str, str] = self.call(lambda: self.run(get), f"stat {key}")
        return out

    def set_class(self, key: str, storage_class: str, pinned: frozenset[tuple[str, str]],
                  etag: str, listed_version: str) -> bool:
        self._set_tier(key, storage_class)
        return True

    def restore(self, key: str, days: int) -> str:
        tier, status = self._tier(key)
        if status:
            return f"{key}: a rehydration is already in progress ({status})"
        if tier != "Archive":
            raise UserError(f"{key} is not archived (tier {tier}); it can be read as it is")
        self._set_tier(key, "Hot")
        return f"{key}: rehydration to Hot started (Azure: up to 15 hours at standard priority)"

    def objects_with_classes(self, walk: Iterator[Entry]) -> Iterator[Entry]:
        """Every blob under the lake with its access tier, one listing page in memory at a time.

        adlfs' listings carry no access tier, so this lists through the Azure client.
        """
        fs: Any = self.fs
        container, _, prefix = self.root.partition("/")
        base = f"{prefix}/" if prefix else ""

        async def page(token: str | None) -> tuple[list[Any], str | None]:
            async with fs.service_client.get_container_client(container) as cc:
                pages = cc.list_blobs(name_starts_with=base or None, include=["metadata"],
                                      results_per_page=5000).by_page(continuation_token=token)
                blobs = [b async for b in await pages.__anext__()]
                return blobs, pages.continuation_token

        token: str | None = None
        while True:
            blobs, token = self.call(lambda t=token: self.run(page, t), f"list {self.url}")  # type: ignore[misc]
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

    def credentials_hint(self) -> str:
        return ("set connection_string, or account_name and account_key, in the config's [store] options, "
                "or AZURE_STORAGE_CONNECTION_STRING")

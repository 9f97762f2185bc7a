"""Azure Blob Storage (and Azurite): obstore on the data path, adlfs and the Azure SDK for the rest.

Reads, listings, stats and uploads go through obstore (``obstore_data``:
GIL-free, its retries off), signed with what adlfs was given (an account key
or connection string, a SAS, or adlfs' token credential). Every read sends
``If-Match`` the ETag the listing gave, so a blob rewritten upstream is a
precondition failure, never other bytes; an upload's identity is the ETag
the upload answered with. Access tiers (Hot, Cool, Cold, Archive) are set in
place; an Archive blob must be rehydrated before it is read.

obstore's listings and HEADs carry no blob metadata, which is where folder
blobs (ADLS Gen2, adlfs, Azure tools: an empty blob flagged
``hdi_isfolder``) say what they are, and they never show a ``dir/`` marker
blob: an empty blob, or a directory that lists empty, is asked about
through adlfs or the SDK. The SDK also serves what obstore has no call for:
conditional deletes, access tiers and listings with them. Those run on
adlfs' event loop (fsspec's IO thread), each bound by the call's deadline.
Copies, moves and deletes stay on adlfs.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import obstore

from tierfs.errors import Archived, UserError
from tierfs.refs import ObjectRef
from tierfs.store.backend import Backend, Changed, Entry, mtime_ns_of, require_identity
from tierfs.store.local import archived_message
from tierfs.store.obstore_data import Listing, ObstoreBackend, client_options, retries_off

#: Uploads above this size go up as blocks of it, 4 at a time, committed in one Put Block List at the end.
_BLOCK = 16 << 20


class AzureBackend(ObstoreBackend):
    provider: ClassVar[str] = "azure"
    counts_characters: ClassVar[bool] = True  # a blob name is at most 1,024 characters

    def new_client(self) -> Any:
        return _obstore_for(self.fs, self.bucket, self.attempt_timeout)

    def _blob(self, key: str) -> Any:
        container, _, name = self.full(key).partition("/")
        return self.fs.service_client.get_blob_client(container, name)

    # -- metadata -----------------------------------------------------------
    def _list(self, rel: str) -> Listing | None:
        listing = super()._list(rel)
        if listing is None:
            return None
        # An empty blob beside a prefix of its name is that directory's folder blob (ADLS Gen2 keeps one
        # for each); any other empty blob may be a folder blob too, which only its metadata says: adlfs reads it.
        if any(not int(m["size"]) and name not in listing.dirs for name, m in listing.objects):
            return None
        listing.objects = [(name, m) for name, m in listing.objects if int(m["size"]) or name not in listing.dirs]
        return listing

    def lists_trees(self) -> bool:
        return False  # an empty blob may be a folder blob, which only its metadata says (see _list)

    def _stat_object(self, rel: str, meta: Any) -> Entry:
        if not int(meta["size"]):
            return Backend.stat(self, rel)  # a file, or a folder blob: its metadata says (see _list)
        return super()._stat_object(rel, meta)

    def _unlisted_marker(self, rel: str, folder_blob: bool) -> bool:
        """A ``rel/`` marker blob (obstore's listings never show one), or a folder blob ``rel``."""
        path = rel.strip("/")

        async def look() -> bool:
            if await self._props(f"{path}/") is not None:
                return True
            return folder_blob and _is_folder(await self._props(path))

        return bool(self.run(look))

    async def _props(self, key: str) -> Any:
        """The blob's properties (with its metadata), or None if there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        async with self._blob(key) as blob:
            try:
                return await blob.get_blob_properties()
            except ResourceNotFoundError:
                return None

    # -- data ---------------------------------------------------------------
    def read_range(self, ref: ObjectRef, start: int, end: int) -> bytes:
        return self._get(ref.key, self._expecting(ref, start, end), ref)

    def read_all(self, key: str) -> bytes:
        return self._get(key, None)

    def archived(self, ref: ObjectRef, exc: BaseException | None) -> Archived | None:
        seen: BaseException | None = exc
        for _ in range(8):
            if seen is None:
                break
            # (the SDK's error_code; obstore names the service's code in its message)
            if getattr(seen, "error_code", None) == "BlobArchived" or "BlobArchived" in str(seen):
                return Archived(archived_message(self.url, ref.key, "Archive tier"))
            seen = seen.__cause__ or seen.__context__
        return None

    # -- writes ----------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> Entry:
        """One Put Blob, or (above one block) blocks committed whole at the end; the identity is the answer."""
        size = os.stat(local).st_size
        out = obstore.put(self.obs, self._path(key), local, use_multipart=size > _BLOCK, chunk_size=_BLOCK,
                          max_concurrency=4)
        return self.put_entry(key, size, out)

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
            props = await self._props(key)
            if props is None or (only_folders and not _is_folder(props)):
                return  # none, or a file of that name, not a marker
            async with self._blob(key) as blob:
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


def _is_folder(props: Any) -> bool:
    """Whether blob properties are a folder blob's: flagged in its metadata (adlfs, ADLS Gen2, Azure tools)."""
    meta = {k.lower(): v for k, v in ((props.metadata if props is not None else None) or {}).items()}
    return "true" in (meta.get("is_directory"), meta.get("hdi_isfolder"))


def _obstore_for(fs: Any, container: str, timeout: float) -> Any:
    """An obstore AzureStore at adlfs' account URL (Azurite's too), signed as adlfs signs, retries off.

    Read from adlfs' own service client, which has parsed the connection
    string or the account options: its URL (with a SAS as its query), and
    its credential (an account key, or a token credential).
    """
    from obstore.store import AzureStore

    client = fs.service_client
    url, _, sas = str(client.url).partition("?")
    endpoint = url.rstrip("/")
    config: Any = {"account_name": client.account_name, "endpoint": endpoint}
    provider = None
    key = getattr(client.credential, "account_key", None)
    if key:
        config["account_key"] = key
    elif sas:
        config["sas_key"] = sas
    elif client.credential is None:
        config["skip_signature"] = True  # a public container
    elif getattr(fs, "sync_credential", None) is not None:
        provider = functools.partial(_azure_token, fs.sync_credential)  # adlfs' default or service principal
    else:
        raise UserError("an Azure credential object cannot be handed to obstore: set connection_string, "
                        "account_key or sas_token in the config's [store] options")
    return AzureStore(container, config=config, client_options=client_options(timeout, endpoint),
                      retry_config=retries_off(timeout), credential_provider=provider)


def _azure_token(credential: Any) -> Any:
    """obstore's credential provider: a bearer token for Azure Storage from adlfs' (sync) token credential."""
    token = credential.get_token("https://storage.azure.com/.default")
    return {"token": token.token, "expires_at": dt.datetime.fromtimestamp(token.expires_on, dt.UTC)}

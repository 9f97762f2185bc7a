"""Leases: how a sweep (gc, backup expiry) and a creation (a snapshot, a backup run) never overlap badly.

A creation may reuse objects that exist already (a copy in ``.tierfs/cas/``
a previous snapshot names, a backup blob) without rewriting them: that is
the point of copying only what changed. A sweep deletes the ones no committed
manifest references. The race: the creation decides to reuse an old copy
(whose snapshot retention deletes meanwhile, or a backup blob no backup
names any more), and the sweep deletes it before the creation's manifest
is committed; the manifest then names bytes that are gone. A grace period by
the object's age cannot close it (the copy reused is old), nor can reading
the manifests again right before deleting (the creation has not committed).

So each side writes a small marker object (a lease) into the store before
it starts and looks for the other side's right after:

- a **creation** writes its lease, then waits while a live sweep marker
  exists (a sweep that may be deleting);
- a **sweep** writes its marker, then lists the leases; if a live creation
  lease exists it deletes nothing this time (it lets go of its marker at once,
  so the creation need not wait for it).

With a store whose writes are seen by the listings that follow them (S3, GCS
and Azure are strongly consistent, as is a local directory), at least one of
the two sees the other: whichever listed second finds the other's marker,
written before that one listed. A creation therefore never reuses what a
running sweep may delete, and a sweep never deletes what a creation under
way may reuse. Reading and deleting then need no further checks.

A marker is renewed (rewritten) every ``ttl / 5`` while held and deleted when
done; one not renewed for ``ttl`` belongs to a process that died (kill -9,
a lost node) and is ignored. Its age is judged by the store's clock, not
ours: ``now`` is taken from the time the store gave our own marker, so clock
skew between nodes does not matter. The price of a dead holder is at most
one ``ttl``: sweeps delete nothing, or creations wait, until it expires.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tierfs.errors import NotFound, StoreError
from tierfs.store.objects import Entry, ObjectStore

log = logging.getLogger(__name__)

#: Where the lake's leases live (under tierfs' own area, never in the live view or a snapshot).
LAKE_LEASES = ".tierfs/leases"
#: A marker not renewed for this long belongs to a dead process.
LEASE_TTL = 300.0
#: How often a waiting creation looks again.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Holder:
    """Another process' marker, as listed."""

    kind: str
    key: str
    age: float  # seconds since it was last renewed, by the store's clock
    owner: str  # user@host pid, from the marker's body where it could be read

    def __str__(self) -> str:
        return f"a {self.kind} by {self.owner or 'another process'} (renewed {self.age:.0f} s ago)"


class Lease:
    """One marker of ``kind`` under ``area``, written on enter, renewed while held, deleted on exit."""

    def __init__(self, store: ObjectStore, area: str, kind: str, ttl: float = LEASE_TTL):
        self.store = store
        self.area = area.strip("/")
        self.kind = kind
        self.ttl = ttl
        self.name = f"{kind}-{uuid.uuid4().hex}.json"
        self.key = f"{self.area}/{self.name}"
        self.owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
        self._written_at = 0.0  # monotonic time of our last write
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self._write()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.kind}", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Stop renewing and delete the marker (once; later calls do nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.store.delete(self.key)
        except Exception as exc:  # it expires on its own; a failure here must not hide the job's outcome
            log.warning("could not remove lease %s (%s); it expires in %.0f s", self.key, exc, self.ttl)

    def _write(self) -> None:
        body = {"kind": self.kind, "owner": self.owner, "ttl": self.ttl}
        self.store.put_bytes(self.key, json.dumps(body).encode())
        self._written_at = time.monotonic()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            try:
                self._write()
            except Exception as exc:  # keep trying; the marker's age shows others how long it has failed
                log.warning("could not renew lease %s: %s", self.key, exc)

    def others(self, kind: str) -> list[Holder]:
        """The live markers of ``kind`` other than ours, judged by the store's clock."""
        try:
            entries = self.store.list_dir(self.area)
        except NotFound:
            entries = []
        mine = next((e for e in entries if e.name == self.name), None)
        if mine is None or not mine.mtime_ns:
            # Our own marker unseen (or timeless): no store clock to judge by; count every marker as live.
            now_ns = None
        else:
            now_ns = mine.mtime_ns + int((time.monotonic() - self._written_at) * 1e9)
        out = []
        for e in entries:
            if e.is_dir or e.name == self.name or not e.name.startswith(f"{kind}-"):
                continue
            key = f"{self.area}/{e.name}"
            age = 0.0 if now_ns is None else max(0.0, (now_ns - e.mtime_ns) / 1e9)
            if age < self.ttl:
                out.append(Holder(kind, key, age, self._owner_of(key)))
            elif age > 2 * self.ttl and e.ref is not None:
                self._clear(key, e)
        return out

    def _clear(self, key: str, dead: Entry) -> None:
        """Remove a long-dead process' marker (only that version: a renewal since would make it live)."""
        assert dead.ref is not None
        try:
            self.store.delete_if(key, dead.ref)
        except Exception as exc:  # harmless to leave: it is ignored
            log.debug("could not remove the stale lease %s: %s", key, exc)

    def _owner_of(self, key: str) -> str:
        try:
            return str(json.loads(self.store.read_all(key)).get("owner", ""))
        except (NotFound, StoreError, ValueError, AttributeError):
            return ""


@contextmanager
def creating(store: ObjectStore, area: str, kind: str, sweep_kind: str, ttl: float = LEASE_TTL) -> Iterator[Lease]:
    """Hold a creation lease; on entry, wait until no sweep that may be deleting is running."""
    with Lease(store, area, kind, ttl) as lease:
        told = False
        while sweeps := lease.others(sweep_kind):
            if not told:
                log.info("waiting for %s to finish before the %s starts", sweeps[0], kind)
                told = True
            time.sleep(POLL_SECONDS)
        yield lease


@contextmanager
def sweeping(store: ObjectStore, area: str, kind: str, create_kind: str,
             ttl: float = LEASE_TTL) -> Iterator[list[Holder]]:
    """Hold a sweep marker; yields the live creations (none: the sweep may delete).

    With creations under way, the marker goes at once (nothing will be
    deleted, so they need not wait) and the caller is told who is creating.
    """
    with Lease(store, area, kind, ttl) as lease:
        creations = lease.others(create_kind)
        if creations:
            lease.release()
        yield creations

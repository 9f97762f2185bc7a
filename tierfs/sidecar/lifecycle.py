"""Applying lifecycle actions: storage-class transitions and expirations, idempotently.

`plan` lists the actions from the objects as they are now, so running `apply`
twice changes nothing the second time. How a class changes on each provider
is `tierfs.store.classes`'s business. Rules can also be installed as an S3 or
GCS bucket's native lifecycle configuration.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from tierfs.errors import UserError
from tierfs.refs import ObjectRef
from tierfs.sidecar.native import document as native_document
from tierfs.sidecar.rules import Action, RuleSet
from tierfs.store.classes import delete_version, set_class
from tierfs.store.objects import ObjectStore

log = logging.getLogger(__name__)


def apply_actions(store: ObjectStore, actions: list[Action], pinned: frozenset[tuple[str, str]] = frozenset(),
                  on_done: Callable[[Action], None] | None = None, jobs: int = 16) -> tuple[int, int]:
    """Perform the actions, ``jobs`` at a time; returns (transitioned, expired).

    ``pinned`` are the (key, version) pairs snapshots read: a transition in a
    versioned bucket deletes the version it copied from unless it is one of them.
    Each action touches one object (or one version), so they run in any order.
    An expiration deletes only the object the plan evaluated (its listed ETag
    or version): one rewritten since is skipped and not counted.
    On the first failure no new action starts; those under way finish, and the
    failure is raised. What was done stays done: a rerun plans only the rest.
    """
    def one(a: Action) -> tuple[Action, bool]:
        if a.kind == "expire" and a.version:
            delete_version(store, a.key, a.version)  # a noncurrent version: its id names it exactly
        elif a.kind == "expire":
            return a, _expire(store, a)
        else:
            return a, set_class(store, a.key, a.to_class, pinned, a.etag, a.listed_version)
        return a, True

    moved = expired = 0
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="lifecycle") as pool:
        queue = iter(actions)
        running = {pool.submit(one, a) for a in itertools.islice(queue, 4 * jobs)}
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        a, changed = fut.result()
                    except Exception as exc:
                        failures.append(exc)
                        continue
                    moved += changed and a.kind == "transition"
                    expired += changed and a.kind == "expire"
                    if on_done:
                        on_done(a)
                if not failures:
                    running |= {pool.submit(one, a) for a in itertools.islice(queue, len(done))}
        finally:
            for fut in running:  # only on an interrupt: otherwise nothing is left running here
                fut.cancel()
    if failures:
        raise failures[0]
    return moved, expired


def _expire(store: ObjectStore, a: Action) -> bool:
    """Delete the object the plan evaluated, not one written under its key since (see ObjectStore.delete_if)."""
    if not (a.etag or a.listed_version):
        store.delete(a.key)  # an action made by hand, naming no version: the caller's word
        return True
    if store.delete_if(a.key, ObjectRef(a.key, 0, a.etag, a.listed_version)):
        return True
    log.info("%s changed (or went) since it was listed; not expired, left for the next run", a.key)
    return False


def install_native(store: ObjectStore, rules: RuleSet) -> str:
    """Install the rules as the bucket's own lifecycle configuration (S3, GCS); returns the bucket.

    This replaces whatever lifecycle configuration the bucket had. Azure's
    equivalent is a storage-account management policy, set through Azure's
    management API rather than the storage account: `tierfs lifecycle export`
    prints it for `az storage account management-policy create`.
    """
    bucket, _, prefix = store.root.partition("/")
    base = f"{prefix}/" if prefix else ""
    document = native_document(store.provider, rules, bucket, base)

    try:
        store.backend.install_rules(document)  # once: a refusal is an answer, not a failure to retry
    except UserError:
        raise  # a provider without native rules says so
    except Exception as exc:
        reason = (str(getattr(exc, "strerror", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ("; some servers accept expirations only — apply without --native"
                if "not implemented" in reason.lower() else "")
        raise UserError(f"bucket {bucket} refused the rules as native lifecycle configuration ({reason}){hint}") from None
    return bucket

"""The Redis tier's per-server health and its deferred slot-map re-read (tierfs/tiers/redis_nodes.py)."""

from __future__ import annotations

import pytest

from tierfs.errors import UserError
from tierfs.tiers import redis_nodes
from tierfs.tiers.redis_nodes import DeferredTopology, Health, check_cluster_url


def test_each_server_is_down_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(redis_nodes.time, "monotonic", lambda: now[0])
    h = Health()
    assert h.all_up()
    assert h.mark_down("10.0.0.1:7000") == (True, 1.0)
    assert h.mark_down("10.0.0.1:7000") == (False, 1.0)  # logged once, not per failed command
    assert h.is_down("10.0.0.1:7000") and not h.is_down("10.0.0.2:7000") and not h.all_up()
    assert not h.claim_probe("10.0.0.1:7000")  # its backoff has not run out
    assert not h.claim_probe("10.0.0.2:7000")  # up: nothing to probe
    now[0] += 1.0
    assert h.claim_probe("10.0.0.1:7000")
    assert not h.claim_probe("10.0.0.1:7000")  # one prober at a time
    h.probe_failed("10.0.0.1:7000")  # backoff doubles...
    now[0] += 1.5
    assert not h.claim_probe("10.0.0.1:7000")
    now[0] += 0.5
    assert h.claim_probe("10.0.0.1:7000")
    for _ in range(10):
        h.probe_failed("10.0.0.1:7000")
    now[0] += 30.0  # ...to 30 s at most
    assert h.claim_probe("10.0.0.1:7000")
    assert h.mark_up("10.0.0.1:7000") and not h.mark_up("10.0.0.1:7000")
    assert h.all_up() and h.down_nodes() == []
    h.mark_down("10.0.0.3:7000")
    h.mark_down("10.0.0.4:7000")
    h.keep_only({"10.0.0.4:7000"})  # 10.0.0.3 left the slot map
    assert h.down_nodes() == ["10.0.0.4:7000"]


def test_the_slot_map_is_re_read_off_the_read_path_only() -> None:
    calls: list[tuple[object, ...]] = []
    topology = DeferredTopology(lambda *a, **kw: calls.append(a))
    topology(last_failed_node_name="10.0.0.1:7000")  # what redis-py does after a connection error
    assert calls == [] and topology.stale
    topology.refresh()
    assert calls == [()] and not topology.stale


@pytest.mark.parametrize(("url", "db"), [("redis://h:7000/2", None), ("redis://h:7000", 3)])
def test_a_cluster_has_only_db_0(url: str, db: int | None) -> None:
    with pytest.raises(UserError, match="only db 0"):
        check_cluster_url(url, db, url.split("7000", 1)[1])
    check_cluster_url("redis://h:7000/0", 0, "/0")

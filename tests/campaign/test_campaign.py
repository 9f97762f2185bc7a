"""The reliability campaign's short form, as CI runs it (the long form: tests/campaign/run.py --long)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import SCENARIOS

pytestmark = pytest.mark.mount


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_campaign_short(name: str, tmp_path: Path) -> None:
    res = SCENARIOS[name](tmp_path, "short")
    print(res.name, res.runs, res.checks, res.figures)
    assert res.ok, "\n".join(res.failures[:20])
    assert res.checks > 0

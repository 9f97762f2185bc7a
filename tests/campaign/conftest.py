"""Hypothesis profiles for the campaign's fuzz tests.

``ci`` (the default, 100 examples a test) keeps a run of tests/campaign under a minute; ``long`` is
the campaign run. Pick one with ``TIERFS_FUZZ_PROFILE=long`` (works however
pytest is invoked) or ``--hypothesis-profile=long`` (when tests/campaign is
named on the command line, so that this file is loaded before the option is read).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# No example database: a run leaves nothing in the work tree; a failure prints its example to paste into @example.
_COMMON = {"database": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=100, deadline=5000, **_COMMON)
settings.register_profile("long", max_examples=5_000, deadline=20_000, **_COMMON)


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--hypothesis-profile", default=None) or os.environ.get("TIERFS_FUZZ_PROFILE", "ci")
    settings.load_profile(chosen)

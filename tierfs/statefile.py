"""Small JSON state files (journal records, resume points), replaced atomically.

A reader sees the old state or the new one, never a torn write, whenever the
process is killed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def save(path: Path, state: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def load(path: Path) -> Any:
    """The state saved at ``path``, or None if there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

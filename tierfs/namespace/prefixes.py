"""Parts of the live view named by prefix in the settings: what lies under one, what holds one.

A prefix is a path of the live view without slashes at its ends
(``datasets/imagenet``); it names that file or directory and everything
below it, never a neighbour that merely starts with the same letters
(``datasets/imagenet2``). ``[mount] read_only_prefixes`` and ``[metadata]
immutable_prefixes`` are both matched here.
"""

from __future__ import annotations

from collections.abc import Iterable


def under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or lies below one."""
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def holds(path: str, prefixes: Iterable[str]) -> bool:
    """Whether one of ``prefixes`` lies strictly below ``path``: moving or removing ``path`` would take it along."""
    inside = path + "/" if path else ""
    return any(p.startswith(inside) and p != path for p in prefixes)

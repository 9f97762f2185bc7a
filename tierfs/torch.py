"""Hand a PyTorch DataLoader's sampling order to the mount, one epoch ahead.

    from tierfs.torch import WarmSampler
    sampler = WarmSampler(RandomSampler(ds), path_of=lambda i: ds.files[i], lead=512)
    loader = DataLoader(ds, sampler=sampler, num_workers=4)

Each epoch, the wrapped sampler's order is drawn, the files it names are sent
to the mount's warm job in that order (``tierfs warm --list``), and the
indices are then yielded as usual: the mount fetches ahead of the workers,
never more than ``lead`` files. Needs no torch import itself: a DataLoader
accepts any iterable of indices as its sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path

from tierfs.cli.warm_cmd import find_mount, start_warm


def warm_order(paths: list[str | Path], lead: int = 256, jobs: int = 8) -> None:
    """Start warming ``paths`` (files under one tierfs mount) in this order."""
    if not paths:
        return
    mountpoint = find_mount(Path(paths[0]))
    root = str(mountpoint).rstrip("/") + "/"
    rel = [str(p)[len(root):] if str(p).startswith(root) else str(p) for p in paths]
    start_warm(mountpoint, rel, None, jobs, lead)


class WarmSampler:
    def __init__(self, sampler: Iterable[int], path_of: Callable[[int], str | Path], lead: int = 256, jobs: int = 8):
        self.sampler = sampler
        self.path_of = path_of
        self.lead = lead
        self.jobs = jobs

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        warm_order([self.path_of(i) for i in order], self.lead, self.jobs)
        return iter(order)

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        return len(self.sampler)

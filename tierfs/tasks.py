"""Where each of the mount's trio tasks waits, written to the log on SIGUSR1.

A mount that stops answering, or a background job that never ends, is stuck
in an ``await`` no thread dump shows (py-spy sees the trio loop idle in
epoll). ``kill -USR1 <daemon pid>`` logs every task of the loop with the
chain of coroutines it is suspended in, innermost last, and changes nothing.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import trio

log = logging.getLogger(__name__)


def _frames(coro: Any) -> list[str]:
    """file:line function of each coroutine (or generator) ``coro`` is suspended in, outermost first."""
    out = []
    seen = 0
    while coro is not None and seen < 64:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        seen += 1
    # trio's own frames under the innermost of ours say only "waiting": keep the last of them
    mine = [f for f in out if "/trio/" not in f]
    return mine + out[-1:] if out and "/trio/" in out[-1] else mine


def task_tree() -> str:
    """Every task under the loop's root, indented by nursery, each with where it waits."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        lines.append("  " * depth + f"task {task.name}")
        lines.extend("  " * depth + "    " + f for f in _frames(task.coro))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)  # type: ignore[arg-type]
    return "\n".join(lines)


async def log_tasks_on_signal() -> None:
    """A task of the mount's nursery: each SIGUSR1 logs :func:`task_tree`."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.warning("tasks (SIGUSR1):\n%s", task_tree())

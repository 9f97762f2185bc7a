"""Single-flight: N concurrent misses on one block cause one fetch.

The first caller for a key runs the fetch; the others wait for its result (or
its error). If the leader is cancelled, a waiter takes over rather than
inheriting a cancellation that was not its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "result", "error", "cancelled")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    def in_flight(self) -> int:
        return len(self._flights)

    def running(self, key: Hashable) -> bool:
        """Whether a fetch of ``key`` is under way (joining it costs no new fetch)."""
        return key in self._flights

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, fetch)
            await flight.done.wait()
            if flight.cancelled:
                continue  # the leader went away; try again (maybe as leader)
            if flight.error is not None:
                raise flight.error
            return flight.result  # type: ignore[return-value]

    async def _lead(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        flight: _Flight[T] = _Flight()
        self._flights[key] = flight
        try:
            flight.result = await fetch()
            return flight.result
        except trio.Cancelled:
            flight.cancelled = True
            raise
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

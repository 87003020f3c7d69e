"""Recent results held in memory for the page's images and download links.

Results carry patient data (the DICOM SEG copies the source's patient and study attributes),
so they are never written to disk: they live in this process, a bounded number of them for a
bounded time, under random identifiers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from pipeline.web.service import Result


class ResultStore:
    """A thread-safe, size- and age-bounded map of result id to :class:`Result`.

    Args:
        max_items: results kept at most; the oldest goes first.
        ttl_seconds: a result is forgotten this long after it was stored.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        max_items: int = 32,
        ttl_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_items < 1 or ttl_seconds <= 0:
            raise ValueError(
                f"max_items must be >= 1 and ttl_seconds > 0, got {max_items} and {ttl_seconds}"
            )
        self.max_items, self.ttl_seconds, self.clock = max_items, ttl_seconds, clock
        self._items: OrderedDict[str, tuple[float, Result]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, result: Result) -> str:
        """Store ``result``; return its new unguessable id."""
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._expire()
            self._items[key] = (self.clock(), result)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Result | None:
        """The result stored under ``key``, or None when unknown or expired."""
        with self._lock:
            self._expire()
            entry = self._items.get(key)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        limit = self.clock() - self.ttl_seconds
        while self._items and next(iter(self._items.values()))[0] <= limit:
            self._items.popitem(last=False)

"""Messages being processed right now, by (sender, control id), so that a copy re-sent on another
connection while the first is still in flight waits for the first's outcome instead of running again.

A sender that times out waiting for an ACK usually opens a new connection and re-sends: without this, both
copies would map and apply the same message. This registry covers one process (one listener); across
processes the store's conditional finish (``MessageStore.finish(expect_attempts=...)``) lets exactly one
outcome commit and the other copy answer it.
"""

from __future__ import annotations

import threading

Key = tuple[str, str]


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Key, threading.Event] = {}

    def claim(self, key: Key) -> threading.Event | None:
        """Claim ``key`` for processing: None when claimed, else the Event the current holder will set."""
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            self._running[key] = threading.Event()
            return None

    def release(self, key: Key) -> None:
        """The holder is done (its outcome is committed): wake every copy waiting for it."""
        with self._lock:
            done = self._running.pop(key, None)
        if done is not None:
            done.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

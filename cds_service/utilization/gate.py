"""Every database call with a deadline, and a breaker that stops calling a database that is gone.

A stopped PostgreSQL refuses connections at once, but a frozen one (SIGSTOP, a hung host, a full
disk) accepts them and never answers: the kernel acknowledges the bytes, so neither libpq's
connect timeout nor TCP keepalives end the wait, and a server-side statement timeout never runs.
So each call runs on one of a few helper threads and the caller waits at most its deadline. A call
that misses it, or fails to connect, opens the breaker: later calls fail at once
(`DatabaseUnavailable`) until the writer's probe (`probe`, a `SELECT 1` every few seconds) gets
an answer. A helper thread stuck on a frozen server stays stuck until the server answers or dies;
the breaker keeps new calls from piling onto it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import sqlalchemy as sa

log = logging.getLogger(__name__)

T = TypeVar("T")
HELPER_THREADS = 8
PROBE_BACKOFF = (0.5, 1.0, 2.0)  # seconds between probes while the database is gone


class DatabaseUnavailable(RuntimeError):
    """The database did not answer in time, or cannot be reached; the message says which."""


class _Late(Exception):
    """A queued call whose caller stopped waiting: not run at all."""


def is_outage(error: BaseException) -> bool:
    """Errors that say the database cannot be used now (not that a statement or row is wrong)."""
    if isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        return True
    return isinstance(error, sa.exc.DBAPIError) and bool(error.connection_invalidated)


def describe(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


class DatabaseGate:
    """Deadlines and the breaker for one process's database calls (see the module's docstring)."""

    def __init__(self, timeout: float, describe_database: str = "the database"):
        self.timeout = timeout
        self.database = describe_database
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future, float]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self.down_since: float | None = None  # time.monotonic() when the outage was noticed
        self.reason = ""
        self.outages = 0
        self._next_probe = 0.0
        self._probes_failed = 0
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ state
    @property
    def down(self) -> bool:
        return self.down_since is not None

    def on_restore(self, listener: Callable[[], None]) -> None:
        """Run `listener` (on the thread that saw it) when the database answers again."""
        self._listeners.append(listener)

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
            self.reason = reason
            self.outages += 1
            self._next_probe = self.down_since + PROBE_BACKOFF[0]
            self._probes_failed = 0
        # once per outage
        log.warning(json.dumps({"event": "database-unreachable", "database": self.database, "reason": reason}))

    def _restore(self) -> None:
        with self._lock:
            if self.down_since is None:
                return
            lasted = time.monotonic() - self.down_since
            self.down_since = None
            self.reason = ""
        log.warning(
            json.dumps({"event": "database-restored", "database": self.database, "outage_seconds": round(lasted, 1)})
        )
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's failure must not keep the gate shut
                log.exception("database-restored listener failed")

    # ------------------------------------------------------------------ calls
    def call(
        self, function: Callable[[], T], timeout: float | None = None, probe: bool = False, slow_ok: bool = False
    ) -> T:
        """`function()` on a helper thread, waiting at most `timeout` (default: the gate's).
        DatabaseUnavailable when the breaker is open (unless `probe`), the deadline passes, or the
        database cannot be reached; any other error of `function` is raised as it is.
        `slow_ok`: missing the deadline says the work was long (a report), not that the database
        is gone: the breaker stays shut."""
        if self.down_since is not None and not probe:
            raise DatabaseUnavailable(f"{self.database} is unreachable ({self.reason})")
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        future: Future = Future()
        self._queue.put((function, future, deadline))
        self._grow()
        try:
            result = future.result(timeout=wait)
        except FutureTimeout:
            future.cancel()
            if not slow_ok:
                self.trip(f"no answer within {wait:g} s")
            raise DatabaseUnavailable(f"{self.database} did not answer within {wait:g} s") from None
        except _Late:
            if not slow_ok:
                self.trip(f"no answer within {wait:g} s")
            raise DatabaseUnavailable(f"{self.database} did not answer within {wait:g} s") from None
        except Exception as error:
            if is_outage(error):
                self.trip(describe(error))
                raise DatabaseUnavailable(f"{self.database} is unreachable ({describe(error)})") from None
            raise
        if self.down_since is not None:
            self._restore()
        return result

    def probe(self, check: Callable[[], object]) -> bool:
        """While the database is gone: at most every few seconds, `check()` once (with the gate's
        deadline); True when it answered (the gate is open again). Called by the writer thread."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        try:
            self.call(check, probe=True)
        except DatabaseUnavailable:
            self._probes_failed += 1
            self._next_probe = time.monotonic() + PROBE_BACKOFF[min(self._probes_failed, len(PROBE_BACKOFF) - 1)]
            return False
        except Exception as error:  # e.g. the schema is not there yet: still gone for our purpose
            log.warning(json.dumps({"event": "database-probe-failed", "error": describe(error)}))
            self._probes_failed += 1
            self._next_probe = time.monotonic() + PROBE_BACKOFF[-1]
            return False
        return True

    # ------------------------------------------------------------------ helper threads
    def _grow(self) -> None:
        with self._lock:
            if self._idle > 0 or self._threads >= HELPER_THREADS:
                return
            self._threads += 1
        # daemon threads: one stuck on a frozen server must not keep the process from exiting
        threading.Thread(target=self._serve, name="database-call", daemon=True).start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            function, future, deadline = self._queue.get()
            with self._lock:
                self._idle -= 1
            if not future.set_running_or_notify_cancel():
                continue
            if time.monotonic() > deadline:  # queued behind stuck calls: its caller has gone
                future.set_exception(_Late())
                continue
            try:
                future.set_result(function())
            except BaseException as error:
                future.set_exception(error)

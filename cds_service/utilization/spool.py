"""The spool: every answered evaluation is on local disk before its answer leaves, until the
database has it.

A hook appends its rows (patient and order already keyed hashes, never raw ids) as JSON lines to
this process's open segment file with one `write` under a lock, and to an in-memory list: no
database, no fsync on the request path (measured in docs/utilization.md). The writer thread
takes the list every BATCH_SECONDS, seals the segment, writes the rows to the database in one
transaction and deletes the segment. While the database is gone, the rows stay in the segment
(fsynced by the writer each round, the in-memory copy dropped) up to CDS_SPOOL_MAX_MB per process;
when the database answers again the writer replays the sealed segments oldest first. Writes are
idempotent (a card is inserted once, its order counted once), so a segment replayed twice, or
written by a call that outlived its deadline, changes nothing.

A process that dies (SIGKILL, a crash, a restart while the database was down) leaves its segments
behind; each holds an flock while its process lives, so any process of the service on this host
that finds an unlocked one adopts and replays it. Segments name the database they belong to and
are never replayed into another. Other processes read the segments too: feedback for a card that
another worker answered a moment ago, or that waits in the spool, finds it there.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from .gate import DatabaseGate, DatabaseUnavailable, describe

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.5
MAX_BATCH = 500
SEGMENT_MAX_BYTES = 16 * 1024 * 1024  # while the database is gone, a new segment after this size
ADOPT_EVERY_SECONDS = 10.0
WRITER_TIMEOUT_SECONDS = 15.0  # one batch's transaction (the request path has its own, shorter one)
CLOSE_SECONDS = 8.0  # within gunicorn's graceful_timeout (10 s): what is not written stays spooled
SUFFIX = ".jsonl"
DATETIME_FIELDS = ("evaluated_at", "signed_at")


def _encode(items: list[dict]) -> bytes:
    try:
        return b"".join(orjson.dumps(item) + b"\n" for item in items)
    except TypeError:  # a string orjson will not write (a lone surrogate that escaped cleaning)
        return b"".join(json.dumps(item, default=str).encode() + b"\n" for item in items)


def _decode(line: bytes) -> dict | None:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:  # a line cut short by a crash: it was never acknowledged
        return None
    if not isinstance(item, dict) or "k" not in item:
        return None
    for name in DATETIME_FIELDS:
        if isinstance(item.get(name), str):
            item[name] = datetime.fromisoformat(item[name])
    return item


@dataclass
class Segment:
    path: Path
    fd: int
    size: int = 0
    count: int = 0
    items: list[dict] | None = field(default_factory=list)  # None: dropped from memory, read the file
    synced: int = 0  # bytes known to be on disk

    def read(self) -> list[dict]:
        if self.items is not None:
            return self.items
        with open(self.path, "rb") as handle:
            lines = handle.read().split(b"\n")
        return [item for item in map(_decode, lines[1:]) if item is not None]


class EvaluationWriter:
    """The spool of one process and the thread that empties it into the database."""

    def __init__(
        self,
        directory: Path,
        database_id: str,
        gate: DatabaseGate,
        write: Callable[[list[dict]], None],
        probe: Callable[[], object],
        max_bytes: int,
    ):
        self.directory = directory
        self.database_id = database_id
        self.gate = gate
        self._write_items = write
        self._probe = probe
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._current: Segment | None = None
        self._backlog: list[Segment] = []  # sealed, oldest first (own and adopted)
        self._bytes = 0
        self._pending = 0  # items in own or adopted segments, not yet in the database
        self._thread: threading.Thread | None = None
        self._closing = False
        self._pid = os.getpid()
        self._header = orjson.dumps({"spool": 1, "database": database_id}) + b"\n"
        self._adopted_at = 0.0
        self.dropped = 0  # items refused because the spool was full or the disk refused them
        self._full_logged = False
        self._foreign_logged: set[str] = set()
        self.replayed = 0

    # ------------------------------------------------------------------ the request path
    def put(self, items: list[dict]) -> bool:
        """Spool `items` (already rows); False when they could not be kept (logged, counted)."""
        if not items:
            return True
        data = _encode(items)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                self._refuse(len(items), "the spool is full (CDS_SPOOL_MAX_MB)")
                return False
            try:
                segment = self._current or self._open_segment()
                os.write(segment.fd, data)  # O_APPEND: one write, whole lines
            except OSError as error:
                self._refuse(len(items), f"the spool cannot be written: {error.strerror or error}")
                return False
            segment.size += len(data)
            segment.count += len(items)
            self._full_logged = False
            if segment.items is not None:
                segment.items.extend(items)
            self._bytes += len(data)
            self._pending += len(items)
            self._ensure_thread()
        return True

    def _refuse(self, count: int, why: str) -> None:
        self.dropped += count
        if not self._full_logged:  # once until the spool takes rows again
            self._full_logged = True
            log.error(json.dumps({"event": "evaluation-spool-refused", "rows": count, "reason": why}))

    def _open_segment(self) -> Segment:
        if os.getpid() != self._pid:  # forked: the parent's segment and locks are not ours
            self._reset_after_fork()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process lives: nobody adopts it
        os.write(fd, self._header)
        path = self.directory / f"{name}{SUFFIX}"
        os.rename(temporary, path)  # seen by adopters only once locked
        self._current = Segment(path, fd, size=len(self._header))
        self._bytes += len(self._header)
        self._full_logged = False
        return self._current

    def _reset_after_fork(self) -> None:
        self._pid = os.getpid()
        self._current, self._backlog = None, []
        self._bytes = self._pending = 0
        self._thread = None
        self._written = threading.Condition(self._lock)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            # started on first use: after gunicorn forks, so each worker has its own thread
            self._thread = threading.Thread(target=self._run, name="evaluation-writer", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def start(self) -> None:
        """Start the writer now when segments left by an earlier process wait to be replayed."""
        if self.directory.is_dir() and any(self.directory.glob(f"*{SUFFIX}")):
            with self._lock:
                self._ensure_thread()

    # ------------------------------------------------------------------ lookups (any thread)
    def find(self, wanted: set[str], key: str = "card_uuid") -> dict[str, dict]:
        """Spooled evaluation rows whose `key` is in `wanted`: this process's in memory, then
        every segment on disk (other workers', adopted ones, this process's dropped from memory)."""
        found: dict[str, dict] = {}
        with self._lock:
            segments = [*self._backlog, *([self._current] if self._current else [])]
            in_memory = [list(s.items) for s in segments if s.items is not None]
        for items in in_memory:
            for item in items:
                if item.get("k") == "e" and item.get(key) in wanted:
                    found[item[key]] = item
        missing = wanted - set(found)
        if not missing or not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                data = path.read_bytes()
            except OSError:  # written and deleted meanwhile: the database has it
                continue
            if not data.startswith(self._header):
                continue
            for value in list(missing):
                at = data.find(orjson.dumps(value))
                while at >= 0:
                    start = data.rfind(b"\n", 0, at) + 1
                    end = data.find(b"\n", at)
                    line = _decode(data[start : end if end >= 0 else len(data)])
                    if line is not None and line.get("k") == "e" and line.get(key) == value:
                        found[value] = line
                        missing.discard(value)
                        break
                    at = data.find(orjson.dumps(value), at + 1)
            if not missing:
                break
        return found

    @property
    def spooled_bytes(self) -> int:
        return self._bytes

    @property
    def pending(self) -> int:
        return self._pending

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            self._wake.wait(BATCH_SECONDS)
            self._wake.clear()
            try:
                if self._round():
                    return
            except Exception:  # the writer never dies; what it holds stays spooled
                log.exception("evaluation writer round failed")
                time.sleep(BATCH_SECONDS)

    def _round(self) -> bool:
        """One round; True when the writer should stop (closing, and nothing more it can do)."""
        if self.gate.down:
            self.gate.probe(self._probe)
        up = not self.gate.down
        with self._lock:
            closing = self._closing
            current = self._current
            if current is not None and current.count and (up or closing or current.size > SEGMENT_MAX_BYTES):
                self._backlog.append(current)
                self._current = None
        if up and time.monotonic() - self._adopted_at > ADOPT_EVERY_SECONDS:
            self._adopted_at = time.monotonic()
            self._adopt()
        if up:
            self._drain()
        if self.gate.down:
            self._hold_on_disk()
        with self._lock:
            done = not self._backlog and (self._current is None or not self._current.count)
        return closing and (done or self.gate.down)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._backlog:
                    return
                segment = self._backlog[0]
            items = segment.read()
            try:
                for start in range(0, len(items), MAX_BATCH):
                    self._write(items[start : start + MAX_BATCH])
            except DatabaseUnavailable:
                return  # stays first in the backlog, on disk
            with self._lock:
                self._backlog.pop(0)
                self._bytes -= segment.size
                self._pending -= segment.count
                self._written.notify_all()
            self._remove(segment)

    def _write(self, batch: list[dict]) -> None:
        try:
            self.gate.call(lambda: self._write_items(batch), timeout=max(WRITER_TIMEOUT_SECONDS, self.gate.timeout))
        except DatabaseUnavailable:
            raise
        except Exception as error:  # a row the database refuses must not take the batch with it
            if len(batch) == 1:
                item = batch[0]
                log.error(
                    json.dumps(
                        {
                            "event": "evaluation-log-row-refused",
                            "card": item.get("card_uuid") or item.get("order_key"),
                            "error": describe(error),
                        }
                    )
                )
                return
            for item in batch:
                self._write([item])

    def _remove(self, segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        with contextlib.suppress(OSError):
            os.close(segment.fd)  # releases the lock

    def _hold_on_disk(self) -> None:
        """The database is gone: the segments are the only copy. fsync them, and keep no copy in memory."""
        with self._lock:
            segments = [*self._backlog, *([self._current] if self._current else [])]
            for segment in segments:
                segment.items = None
        for segment in segments:
            if segment.synced < segment.size:
                size = segment.size
                with contextlib.suppress(OSError):
                    os.fsync(segment.fd)
                    segment.synced = size

    def _adopt(self) -> None:
        """Segments whose process is gone (no lock held) join this writer's backlog."""
        if not self.directory.is_dir():
            return
        with self._lock:
            own = {s.path for s in self._backlog} | ({self._current.path} if self._current else set())
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path in own:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError  # replaced meanwhile
            except OSError:  # locked by its live process, or gone
                os.close(fd)
                continue
            with open(path, "rb") as handle:
                first = handle.readline()
            if first != self._header:
                os.close(fd)
                if str(path) not in self._foreign_logged:
                    self._foreign_logged.add(str(path))
                    log.error(json.dumps({"event": "evaluation-spool-foreign", "file": str(path)}))
                continue
            segment = Segment(path, fd, size=os.fstat(fd).st_size, items=None)
            segment.count = len(segment.read())
            segment.synced = segment.size
            with self._lock:
                self._backlog.append(segment)
                self._bytes += segment.size
                self._pending += segment.count
            self.replayed += segment.count
            log.info(json.dumps({"event": "evaluation-spool-adopted", "file": path.name, "rows": segment.count}))

    # ------------------------------------------------------------------ flush and close
    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything spooled so far to the database, now; False if that took longer than
        `timeout` (the database gone: the rows stay spooled)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._pending:
                self._ensure_thread()
        self._wake.set()
        with self._written:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=CLOSE_SECONDS)
        if thread is None or not thread.is_alive():
            # What is left stays on disk for the next process; its lock is let go so that one
            # (in this process too, as a test does) may adopt it.
            with self._lock:
                segments = [*self._backlog, *([self._current] if self._current else [])]
                self._backlog, self._current = [], None
            for segment in segments:
                if segment.count:
                    with contextlib.suppress(OSError):
                        os.fsync(segment.fd)
                        os.close(segment.fd)
                else:
                    self._remove(segment)

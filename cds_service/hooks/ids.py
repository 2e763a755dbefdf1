"""Random identifiers (card, suggestion and consult uuids) without a system call each.

`uuid.uuid4()` asks the kernel for 16 bytes every time, and in a sandboxed container that call
costs more than the rest of a small hook. The same kernel randomness is drawn here 4 KiB at a
time and dealt out 16 bytes per id; a forked worker starts with a fresh pool, so no two
processes ever deal the same bytes.
"""

from __future__ import annotations

import os
import threading
import uuid

_POOL_BYTES = 4096
_lock = threading.Lock()
_pool = b""
_offset = 0


def _reset() -> None:
    global _pool, _offset, _lock
    _pool, _offset = b"", 0
    _lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_reset)


def new_uuid() -> str:
    """A random (version 4) UUID, as uuid.uuid4() would make, as a string."""
    global _pool, _offset
    with _lock:
        if _offset + 16 > len(_pool):
            _pool, _offset = os.urandom(_POOL_BYTES), 0
        chunk = _pool[_offset : _offset + 16]
        _offset += 16
    return str(uuid.UUID(bytes=chunk, version=4))

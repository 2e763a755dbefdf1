"""What the spool costs a hook: `Store.record` on the request path, and the writer's fsync while
the database is gone (docs/utilization.md, "The record survives its database").

    .venv/bin/python bench/spool.py            # about 20 s

Measures, on an SQLite database in a temporary folder, per recorded card (median of many calls):
building the row (the patient and order hashes, the JSON columns), the append to the spool file
(one `write` under a lock), and the whole `record` call; then the hook's own time for the base
patient of bench/bench.py (its evaluation in-process), to put them side by side; then the writer's
fsync of a segment while the database is gone.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.clinical.mappings import get_mappings  # noqa: E402
from cds_service.hooks.evaluation import evaluate_hook  # noqa: E402
from cds_service.utilization.spool import _encode  # noqa: E402
from cds_service.utilization.store import OrderRecord, Store, utcnow  # noqa: E402
from cds_service.web.recording import order_records  # noqa: E402

CALLS = 20_000


def median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def main() -> int:
    from cds_service.cli import fixtures

    mappings = get_mappings()
    body = fixtures.hook_request("lbp-radic-failed-pt")
    result = evaluate_hook("spine-mri-order-select", body, mappings)
    hook_times = []
    for _ in range(300):
        started = time.perf_counter()
        evaluate_hook("spine-mri-order-select", body, mappings)
        hook_times.append(time.perf_counter() - started)
    records = order_records("spine-mri-order-select", body, result, mappings, "live", 12.5)
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{folder}/bench.sqlite3", spool_dir=Path(folder) / "spool")
        store.writer._ensure_thread = lambda: None  # measure the append alone: no writer competing
        row_times, write_times, record_times = [], [], []
        for index in range(CALLS):
            fresh = [OrderRecord(**{**vars(records[0]), "card_uuid": f"c{index}", "evaluated_at": utcnow()})]
            started = time.perf_counter()
            rows = [store._row(r) for r in fresh]
            built = time.perf_counter()
            data = _encode(rows)
            segment = store.writer._current or store.writer._open_segment()
            os.write(segment.fd, data)
            written = time.perf_counter()
            row_times.append(built - started)
            write_times.append(written - built)
            fresh[0].card_uuid = f"r{index}"
            started = time.perf_counter()
            store.record(fresh)
            record_times.append(time.perf_counter() - started)
        segment = store.writer._current
        size = segment.size if segment else 0
        fsyncs = []
        for _ in range(20):
            os.write(segment.fd, data * 250)  # a writer round's worth at 500 hooks/s
            started = time.perf_counter()
            os.fsync(segment.fd)
            fsyncs.append(time.perf_counter() - started)
        store.close()
    hook = statistics.median(hook_times)
    print(f"hook (evaluate_hook, base patient, in-process): median {hook * 1e3:.2f} ms")
    print(f"row building per card (hashes, JSON columns): median {median_us(row_times)} us")
    print(f"spool append per card (JSON line, one write): median {median_us(write_times)} us")
    print(
        f"Store.record per card (all of it, request path): median {median_us(record_times)} us "
        f"= {statistics.median(record_times) / hook * 100:.1f}% of the hook"
    )
    print(f"spool bytes per card: {size // (2 * CALLS)}")
    print(f"writer fsync of a round's segment (database gone): median {statistics.median(fsyncs) * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

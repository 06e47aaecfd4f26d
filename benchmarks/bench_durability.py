"""What durability costs: the once-per-process check of runs.db, a run record rewrite, a rebuild, a backup.

A synthetic store (no training): RUNS runs with EPOCHS epochs and STEPS steps each, their records
written as a worker would. Prints one JSON line. Run: ``python benchmarks/bench_durability.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tl_dashboard import records
from tl_dashboard.backup import backup_store
from tl_dashboard.runs import RunStore

RUNS, EPOCHS, STEPS = int(os.environ.get("RUNS", 200)), 20, 2500


def main() -> None:
    root = Path(tempfile.mkdtemp()) / "runs"
    store = RunStore(root)
    ids = []
    for k in range(RUNS):
        run_id = store.create_run({"model": "efficientnet_lite0", "n": k}, label=f"run {k}")
        store.add_steps(run_id, [{"step": i, "epoch": i / (STEPS / EPOCHS), "loss": 1.0 / (i + 1), "lr": 1e-3} for i in range(STEPS)])
        for e in range(1, EPOCHS + 1):
            with store._tx() as con:  # epochs without a record rewrite each: only the last one is timed
                con.execute("INSERT INTO epoch_metrics (run_id, epoch, val_acc) VALUES (?,?,?)", (run_id, e, 0.5))
        store.finish_run(run_id, "finished", summary={"val_accuracy": 0.5})
        ids.append(run_id)
    out = {"runs": RUNS, "steps_per_run": STEPS, "db_mb": round(os.path.getsize(store.db_path) / 1e6, 1)}
    t = time.perf_counter()
    records.write_record(store, ids[-1])
    out["record_rewrite_s"] = round(time.perf_counter() - t, 4)
    out["record_kb"] = round((store.run_dir(ids[-1]) / records.RECORD_FILE).stat().st_size / 1e3, 1)
    records._CHECKED.clear()
    t = time.perf_counter()
    RunStore(root)
    out["first_open_with_check_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    RunStore(root)
    out["later_open_s"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    rep = backup_store(store, root.parent / "backup")
    out["backup_s"] = round(time.perf_counter() - t, 3)
    out["backup_integrity"] = rep.integrity
    data = store.db_path.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(str(store.db_path) + suffix).unlink(missing_ok=True)
    store.db_path.write_bytes(data[: len(data) // 2])
    records._CHECKED.clear()
    t = time.perf_counter()
    rebuilt = RunStore(root)
    out["rebuild_truncated_s"] = round(time.perf_counter() - t, 3)
    out["rebuilt_runs"] = len(rebuilt.list_runs())
    out["rebuilt_steps_per_run"] = len(rebuilt.steps(ids[0]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

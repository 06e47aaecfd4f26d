"""DistributedDataParallel with 2 processes on CPU (gloo), launched by torchrun through the CLI."""

import json
import subprocess
import sys

import pytest

from tl_dashboard.engine import shard_indices
from tl_dashboard.runs import RunStore


def test_ranks_get_disjoint_shards_that_cover_the_epoch():
    for n in (10, 11):
        a = shard_indices(n, epoch=3, seed=0, rank=0, world=2).tolist()
        b = shard_indices(n, epoch=3, seed=0, rank=1, world=2).tolist()
        assert len(a) == len(b) == (n + 1) // 2
        assert set(a) | set(b) == set(range(n))
        if n % 2 == 0:
            assert not set(a) & set(b)
        assert a != shard_indices(n, epoch=4, seed=0, rank=0, world=2).tolist()  # reshuffled per epoch


@pytest.mark.slow
def test_two_process_run_records_one_run_and_matches_one_process(tmp_path, shapes3_dir):
    common = [str(shapes3_dir), "--epochs", "4", "--image-size", "32", "--batch-size", "8", "--lr", "0.01", "--json"]
    cli = [sys.executable, "-m", "tl_dashboard.cli", "train"]
    single = subprocess.run(cli + common + ["--runs-dir", str(tmp_path / "one")], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(cli + common + ["--nproc", "2", "--runs-dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr
    one = json.loads(single.stdout.strip().splitlines()[-1])
    two = json.loads(ddp.stdout.strip().splitlines()[-1])
    runs = RunStore(tmp_path / "two").list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "finished", runs[0]["error"] if runs else "no run"
    assert "2 processes" in runs[0]["summary"]["device"]
    assert len(RunStore(tmp_path / "two").epochs(runs[0]["id"])) == 4
    assert abs(one["val_accuracy"] - two["val_accuracy"]) <= 0.15

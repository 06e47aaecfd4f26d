"""Honest numbers: Wilson intervals, the learning-rate finder, the auto head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tl_dashboard import stats
from tl_dashboard.auto_head import fit_head, stratified_folds
from tl_dashboard.lr_finder import suggest

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "emoji3"


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (9, 10, 0.5958, 0.9821),
        (1, 36, 0.0049, 0.1417),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    got = stats.wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_refuses_impossible_counts_and_text_names_the_count():
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)
    assert stats.accuracy_text(0.9, 10) == "90.0% (60-98%, n=10)"
    assert stats.accuracy_text(None, 10) == "-"
    assert stats.intervals_overlap((0.5, 0.7), (0.69, 0.9)) and not stats.intervals_overlap((0.1, 0.2), (0.3, 0.4))
    assert stats.overlap_note(["a", "b"], [(0.5, 0.7), (0.6, 0.8)]).startswith("95% intervals overlap: a and b")
    assert stats.overlap_note(["a", "b"], [(0.1, 0.2), (0.6, 0.8)]) is None
    m, lo, hi = stats.mean_interval([0.8, 0.9, 1.0])
    assert m == pytest.approx(0.9) and lo < 0.9 < hi


def test_stratified_folds_partition_every_index():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(y, 3)
    assert sorted(torch.cat(folds).tolist()) == list(range(len(y)))
    assert all(len(set(y[f].tolist())) == 3 for f in folds)  # each fold sees every class


def test_auto_head_separates_separable_features_and_reports_its_choice():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 16, generator=g) + 5.0  # offset: the fit must fold the standardisation back
    rows = []
    fit = fit_head(x[:60], y[:60], 3, f_val=x[60:], y_val=y[60:], on_epoch=rows.append)
    acc = ((x[60:] @ fit.weight.T + fit.bias).argmax(1) == y[60:]).float().mean().item()
    assert acc >= 0.95
    assert rows and rows == fit.history and rows[-1]["val_acc"] == pytest.approx(acc)
    assert fit.chosen["solver"] == "lbfgs" and fit.chosen["weight_decay"] > 0 and fit.chosen["folds"] == 5


def test_lr_suggestions_on_a_synthetic_curve():
    lrs = [1e-6 * 10 ** (i / 10) for i in range(60)]  # 1e-6 .. ~1e0
    # flat, then falls fastest around 1e-3, bottoms near 1e-1, then diverges
    losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3) * 3)) + (max(0, math.log10(lr) + 1) ** 2) * 3 for lr in lrs]
    s = suggest(lrs, losses)
    assert 1e-4 < s["steep_lr"] < 1e-2
    assert 1e-4 < s["valley_lr"] < 1e-1
    assert 1e-3 < s["min_lr"] < 1e-1


def test_lr_find_cli_returns_a_finite_lr_inside_its_range_on_the_sample_set(capsys):
    from tl_dashboard.cli import main

    rc = main(["lr-find", str(SAMPLE), "--image-size", "64", "--num-iter", "40", "--start-lr", "1e-6", "--end-lr", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lr = out["suggested_lr"]
    assert math.isfinite(lr) and 1e-6 <= lr <= 1
    assert out["curve"] and all({"lr", "loss"} <= set(p) for p in out["curve"])
    assert all(math.isfinite(p["loss"]) for p in out["curve"])


def _pt(freeze, acc, seed, secs=10.0, shared=False, scratch=False):
    return {
        "run_id": f"r{freeze}{seed}",
        "label": f"freeze={freeze}",
        "status": "finished",
        "freeze": freeze,
        "freeze_label": freeze,
        "from_scratch": scratch,
        "trainable_params": {"head": 4000, "none": 4_000_000}[freeze],
        "best_val_accuracy": acc,
        "train_seconds": secs,
        "epochs": 3,
        "seed": seed,
        "val_images": 36,
        "gflops_per_epoch": 1.5,
        "shared_machine": shared,
    }


def test_sweep_repeats_merge_into_mean_with_error_bars_and_mark_shared_timings():
    from tl_dashboard import charts

    pts = [_pt("head", 0.90, 0), _pt("head", 0.94, 1), _pt("head", 0.92, 2, shared=True), _pt("none", 0.70, 0)]
    merged = {p["freeze"]: p for p in stats.group_repeats(pts)}
    assert merged["head"]["repeats"] == 3 and merged["head"]["best_val_accuracy"] == pytest.approx(0.92)
    assert merged["head"]["acc_low"] < 0.92 < merged["head"]["acc_high"] and merged["head"]["shared_machine"]
    lo, hi = stats.accuracy_interval(0.70, 36)  # one run: its Wilson interval
    assert (merged["none"]["acc_low"], merged["none"]["acc_high"]) == pytest.approx((lo, hi))
    fig = charts.sweep_figure(pts)
    acc_trace = next(t for t in fig.data if t.xaxis == "x")
    assert acc_trace.error_y.array is not None and len(acc_trace.x) == 2
    time_trace = next(t for t in fig.data if t.xaxis == "x2")
    assert any(str(s).endswith("-open") for s in time_trace.marker.symbol)
    assert any("GFLOP" in t for t in time_trace.text if t)
    note = stats.sweep_overlap_note(list(merged.values()))
    assert note is None or "overlap" in note


def test_compare_table_shows_interval_count_cost_and_shared_timing():
    from tl_dashboard import compare

    runs = [
        {
            "id": "a-1",
            "label": "a",
            "config": {"epochs": 3},
            "summary": {
                "best_val_accuracy": 0.9,
                "val_images": 36,
                "gflops_per_epoch": 2.0,
                "shared_machine": True,
                "load_avg": [3.2, 2.0, 1.0],
                "cpu_seconds": 12.0,
                "epochs": 3,
            },
        },
        {
            "id": "b-2",
            "label": "b",
            "config": {"epochs": 3},
            "summary": {"best_val_accuracy": 0.95, "val_images": 36, "shared_machine": False, "epochs": 3},
        },
    ]
    rows = {r["field"]: r for r in compare.compare_table(runs)}
    assert rows["best val accuracy"]["a"] == "90.0% (75-96%, n=36)"
    assert rows["cost per epoch"]["a"] == "2 GFLOPs"
    assert rows["timing"]["a"].startswith("shared machine") and rows["timing"]["b"].startswith("machine to itself")
    assert "a and b" in compare.compare_overlap_note(runs)


def test_queue_sweep_repeats_each_depth_over_seeds(tmp_path):
    from tl_dashboard import compare
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.runs import RunStore

    store = RunStore(tmp_path / "runs")
    group, ids = compare.queue_sweep(store, TrainConfig(str(SAMPLE), seed=5), ["head", "none"], start=False, repeats=2)
    runs = [store.get_run(i) for i in ids]
    assert [(r["config"]["freeze"], r["config"]["seed"]) for r in runs] == [("head", 5), ("none", 5), ("head", 6), ("none", 6)]


def _store_run(tmp_path, cfg, callbacks=None):
    import os
    import socket

    from tl_dashboard.runs import RunStore
    from tl_dashboard.worker import run_training

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(cfg.to_dict())
    store.mark_running(run_id, os.getpid(), socket.gethostname())
    result = run_training(store, run_id, callbacks or [])
    return store, run_id, result


def test_auto_head_checkpoint_scores_the_reported_best_everywhere(tmp_path, monkeypatch):
    """Defaults (lr and epochs auto, head only): the solver's head is the checkpoint, and Evaluate,
    the store's summary and the JSON agree on its accuracy."""
    from tl_dashboard import evaluate as ev
    from tl_dashboard.engine import TrainConfig

    monkeypatch.setenv("TL_OFFLINE", "1")
    cfg = TrainConfig(data_dir=str(SAMPLE), image_size=64)
    assert cfg.lr == 0 and cfg.epochs == 0  # auto is the default
    store, run_id, result = _store_run(tmp_path, cfg)
    assert result.status == "finished" and result.auto["solver"] and result.auto["chosen"]["weight_decay"] > 0
    s = store.get_run(run_id)["summary"]
    assert s["val_accuracy"] == s["best_val_accuracy"] == pytest.approx(result.history[-1]["val_acc"])
    assert s["epochs"] == len(store.epochs(run_id)) == len(result.history) >= 1
    assert ev.evaluate_run(store, run_id).accuracy == pytest.approx(s["val_accuracy"], abs=1e-6)
    assert any("Automatic head" in r["message"] for r in store.logs(run_id))


def test_a_stopped_run_agrees_across_runs_evaluate_and_json(tmp_path, monkeypatch, capsys):
    """Stopped after its 2nd epoch of 6: epochs 2 everywhere, Evaluate scores the kept model as the summary says."""
    from tl_dashboard import evaluate as ev
    from tl_dashboard.cli import main
    from tl_dashboard.engine import Callback, TrainConfig

    monkeypatch.setenv("TL_OFFLINE", "1")

    class StopAfter2(Callback):
        n = 0

        def on_epoch_end(self, row):
            self.n += 1

        def should_stop(self):
            return self.n >= 2

    cfg = TrainConfig(data_dir=str(SAMPLE), image_size=64, lr=1e-2, epochs=6, batch_size=16)
    store, run_id, result = _store_run(tmp_path, cfg, [StopAfter2()])
    assert result.status == "stopped" and result.epochs == 2
    run = store.get_run(run_id)
    s = run["summary"]
    assert run["status"] == "stopped" and s["epochs"] == 2 and len(store.epochs(run_id)) == 2
    assert s["best_val_accuracy"] == pytest.approx(max(e["val_acc"] for e in store.epochs(run_id)))
    kept = ev.evaluate_run(store, run_id).accuracy
    assert kept == pytest.approx(s["val_accuracy"], abs=1e-6)
    assert main(["runs", "--json", "--runs-dir", str(tmp_path / "runs")]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1]) if r["run_id"] == run_id)
    assert (row["epochs"], row["val_accuracy"], row["best_val_accuracy"]) == (2, s["val_accuracy"], s["best_val_accuracy"])


def test_an_impossible_setting_is_refused_with_the_valid_values(tmp_path, capsys):
    from tl_dashboard.cli import main

    rc = main(["train", str(SAMPLE), "--epochs", "-1", "--runs-dir", str(tmp_path / "runs")])
    assert rc == 2 and "--epochs" in capsys.readouterr().err
    rc = main(["train", str(SAMPLE), "--lr", "-0.1", "--runs-dir", str(tmp_path / "runs")])
    assert rc == 2 and "--lr" in capsys.readouterr().err


def test_progress_of_ended_runs_and_eta_without_the_cache_build():
    from views import present

    stopped = {
        "status": "stopped",
        "progress": {"epoch": 3, "epochs": 10, "step": 25, "total_steps": 100},
        "config": {"epochs": 10},
        "summary": {"epochs": 2},
    }
    p = present.progress_info(stopped, [{"step": 25, "epoch": 2.5, "time": 1.0}])
    assert p["text"] == "stopped after 2 of 10 epochs" and p["fraction"] == pytest.approx(0.2) and "3/10" not in p["text"]
    auto = {
        "status": "finished",
        "progress": {"epoch": 15, "epochs": 200, "step": 15, "total_steps": 200},
        "config": {"epochs": 0},
        "summary": {"epochs": 15, "auto": {"solver": True}},
    }
    assert present.progress_info(auto, [])["text"].startswith("15 epoch(s) (auto")
    # 60 s of cache build before step 1, then 1 s per step with 10 steps per epoch and 2 s of validation
    steps, t = [], 60.0
    for s in range(1, 26):
        t += 1.0 + (2.0 if s > 1 and (s - 1) % 10 == 0 else 0.0)
        steps.append({"step": s, "epoch": s / 10, "time": t})
    run = {"status": "running", "progress": {"epoch": 3, "epochs": 4, "step": 25, "total_steps": 40, "elapsed": t}, "config": {"epochs": 4}}
    eta = present.progress_info(run, steps, 8)["eta"]
    assert eta == pytest.approx(12.0 * 1.5)  # 1.5 epochs left at 12 s (10 steps + validation) each
    one = {
        "status": "running",
        "progress": {"epoch": 1, "epochs": 4, "step": 1, "total_steps": 40, "elapsed": 61.0},
        "config": {"epochs": 4},
    }
    assert present.progress_info(one, steps[:1], 8)["eta"] is None  # not 61 s x 39 steps: the cache build is not per step


def test_predict_names_a_bad_file_and_still_predicts_the_others(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from tl_dashboard import evaluate as ev
    from tl_dashboard.engine import TrainConfig

    monkeypatch.setenv("TL_OFFLINE", "1")
    store, run_id, _ = _store_run(tmp_path, TrainConfig(data_dir=str(SAMPLE), image_size=64, epochs=1, lr=1e-2))
    good = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good, format="PNG")
    preds, failures = ev.predict_each(
        store.run_dir(run_id), [b"not an image", good.getvalue()], ["broken.jpg", "red.png"], top_k=2, cam=False
    )
    assert [p.name for p in preds] == ["red.png"] and len(preds[0].top) == 2
    assert len(failures) == 1 and failures[0]["name"] == "broken.jpg"
    assert failures[0]["reason"].startswith("broken.jpg:") and "BytesIO" not in failures[0]["reason"]


def test_auto_head_accepts_inference_mode_tensors():
    """features.head_features returns inference-mode tensors; the solver must take them as they are."""
    with torch.inference_mode():
        x, y = torch.randn(30, 6), torch.arange(30) % 3
    fit = fit_head(x, y, 3, f_val=x, y_val=y)
    assert fit.weight.shape == (3, 6)


def test_lr_find_reports_every_step_to_on_step():
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.lr_finder import lr_find

    seen = []
    r = lr_find(TrainConfig(str(SAMPLE), image_size=64), num_iter=8, on_step=lambda k, n: seen.append((k, n)))
    assert seen == [(k, 8) for k in range(1, r.iterations + 1)]  # step k of N, for the Train page's bar

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


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962), (9, 10, 0.5958, 0.9821),
    (1, 36, 0.0049, 0.1417), (0, 0, 0.0, 1.0),
])
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

    rc = main(["lr-find", str(SAMPLE), "--image-size", "64", "--num-iter", "40", "--start-lr", "1e-6",
               "--end-lr", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lr = out["suggested_lr"]
    assert math.isfinite(lr) and 1e-6 <= lr <= 1
    assert out["curve"] and all({"lr", "loss"} <= set(p) for p in out["curve"])
    assert all(math.isfinite(p["loss"]) for p in out["curve"])

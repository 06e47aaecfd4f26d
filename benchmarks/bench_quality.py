"""Does the default head-only run reach what a linear probe can, on folders nobody tuned for?

For each folder (three generated fresh in a temp dir by ``quality_data.py`` - glyphs from the
system's fonts, shapes/textures on noise, photo-like scenes - plus ``sample_data/emoji3``), the
frozen features are computed once (``features.head_features``: the default model, weights, split
and seed; this is the feature cache every head-only run builds first, the same for all three) and
then, side by side on exactly those features and that split:

* **default** - what ``engine.train`` runs with the defaults (head only, lr and epochs "auto"):
  ``auto_head.fit_head``, the cross-validated L-BFGS head;
* **old default** - lr 1e-3 for 10 epochs: a zero head, AdamW, per-step cosine, batches of 32,
  validation after each epoch, as the engine's cached path trains it;
* **sklearn probe** - ``LogisticRegressionCV`` (5-fold, its default 10 values of C, accuracy),
  on the raw features.

Times are the head's (or the fit's) alone; the feature time is shown once. ``--full-runs`` also
times whole ``engine.train`` runs (decode + feature cache + head) for both defaults. Write down
``uptime``: the figures are wall seconds on whatever else the machine runs.

    python benchmarks/bench_quality.py --per-class 40 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from quality_data import make_folder

from tl_dashboard.engine import TrainConfig, train
from tl_dashboard.features import head_features
from tl_dashboard.stats import accuracy_text

REPO = Path(__file__).resolve().parent.parent


def sklearn_probe(fs) -> dict:
    from sklearn.linear_model import LogisticRegressionCV

    x, y = fs.train.numpy(), fs.train_labels.numpy()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegressionCV(Cs=10, cv=5, max_iter=1000).fit(x, y)
    secs = time.perf_counter() - t0
    return {"accuracy": float(m.score(fs.val.numpy(), fs.val_labels.numpy())), "seconds": round(secs, 3), "C": float(m.C_[0])}


def auto_head_fit(fs) -> dict:
    """The default head-only run's training phase: exactly what engine.train runs on the cached features."""
    from tl_dashboard.auto_head import fit_head

    t0 = time.perf_counter()
    fit = fit_head(fs.train, fs.train_labels, len(fs.classes), seed=0)
    secs = time.perf_counter() - t0
    acc = float(((fs.val @ fit.weight.T + fit.bias).argmax(1) == fs.val_labels).float().mean())
    return {"accuracy": acc, "seconds": round(secs, 3), "C": fit.chosen["C"], "iterations": fit.chosen["iterations"]}


def adamw_epochs(fs, lr: float = 1e-3, epochs: int = 10, batch: int = 32, wd: float = 0.01, seed: int = 0) -> dict:
    """The old default's training phase on cached features, as engine.train ran it: a fresh nn.Linear head,
    AdamW, per-step cosine to 1%, shuffled batches of 32, validation after every epoch."""
    import math

    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    head = torch.nn.Linear(fs.train.shape[1], len(fs.classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    n = len(fs.train)
    spe = max(1, math.ceil(n / batch))
    total = spe * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(spe):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(head(fs.train[idx]), fs.train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = float((head(fs.val).argmax(1) == fs.val_labels).float().mean())
    return {"accuracy": acc, "seconds": round(time.perf_counter() - t0, 3)}


def product_run(cfg: TrainConfig) -> dict:
    r = train(cfg)
    return {
        "accuracy": r.val_accuracy,
        "seconds": r.train_seconds,
        "epochs": r.epochs,
        "cache_build_seconds": (r.feature_cache or {}).get("build_seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=0, help="0 = the model's own size (224)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--kinds", default="glyphs,shapes,scenes")
    ap.add_argument(
        "--full-runs",
        action="store_true",
        help="also time whole engine.train runs (decode + feature cache + head), default and old default",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl-quality-") as tmp:
        folders = [(k, make_folder(Path(tmp), k, per_class=args.per_class)) for k in args.kinds.split(",") if k]
        folders.append(("emoji3 (sample)", REPO / "sample_data" / "emoji3"))
        for name, folder in folders:
            base = TrainConfig(str(folder), model=args.model, image_size=args.image_size, freeze="head")
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            fs = head_features(base)
            feat_s = time.perf_counter() - t0
            row = {
                "folder": name,
                "n_val": len(fs.val_labels),
                "n_train": len(fs.train_labels),
                "classes": len(fs.classes),
                "features_seconds": round(feat_s, 2),
                "default": auto_head_fit(fs),
                "old_default": adamw_epochs(fs),
                "sklearn": sklearn_probe(fs),
                "load_avg_before": round(load, 2),
            }
            if args.full_runs:
                row["full_default"] = product_run(base)
                row["full_old_default"] = product_run(
                    TrainConfig(str(folder), model=args.model, image_size=args.image_size, freeze="head", lr=1e-3, epochs=10)
                )
            rows.append(row)
            d, o, p = row["default"], row["old_default"], row["sklearn"]
            print(
                f"{name}: features {feat_s:.1f} s | default {accuracy_text(d['accuracy'], row['n_val'])} in {d['seconds']:.2f} s "
                f"(C={d['C']:.3g}) | lr 1e-3 x 10 epochs {o['accuracy']:.1%} in {o['seconds']:.2f} s | "
                f"LogisticRegressionCV {p['accuracy']:.1%} (C={p['C']:.3g}) in {p['seconds']:.2f} s | load {load:.1f}"
                + (
                    f" | full runs: default {row['full_default']['accuracy']:.1%} in {row['full_default']['seconds']:.1f} s, "
                    f"old {row['full_old_default']['accuracy']:.1%} in {row['full_old_default']['seconds']:.1f} s"
                    if args.full_runs
                    else ""
                ),
                flush=True,
            )
    print(
        "\n| folder | classes | train / val images | default (auto) | its head time | lr 1e-3, 10 epochs | its head time "
        "| LogisticRegressionCV | its fit time | frozen features (once) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, o, s = r["default"], r["old_default"], r["sklearn"]
        print(
            f"| {r['folder']} | {r['classes']} | {r['n_train']} / {r['n_val']} | {accuracy_text(d['accuracy'], r['n_val'])} "
            f"| {d['seconds']:.2f} s | {o['accuracy']:.1%} | {o['seconds']:.2f} s | {s['accuracy']:.1%} | {s['seconds']:.2f} s "
            f"| {r['features_seconds']:.1f} s |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

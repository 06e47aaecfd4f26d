"""Does the default head-only run reach what a linear probe can, on folders nobody tuned for?

For each folder (three generated fresh in a temp dir by ``quality_data.py`` - glyphs from the
system's fonts, shapes/textures on noise, photo-like scenes - plus ``sample_data/emoji3``), in one
process, side by side:

* **default** - ``engine.train`` with the defaults (head only; lr and epochs "auto": the
  cross-validated L-BFGS head on the cached features);
* **old default** - ``engine.train`` with lr 1e-3 and 10 epochs (the defaults before auto);
* **sklearn probe** - ``LogisticRegressionCV`` (5-fold, its default C grid, accuracy) on the same
  frozen features (``features.head_features``: same model, weights, split and seed), scaled by
  nothing; its time is the fit alone (the features are computed once, outside the timing).

Accuracies are on the same validation split, with the image count and 95% Wilson interval. Run
seconds are wall time of the whole run (decode, feature cache, training, validation). Nothing
here is cached between the runs (each builds its own feature cache). Write down ``uptime``.

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

import torch  # noqa: E402
from quality_data import make_folder  # noqa: E402

from tl_dashboard.engine import TrainConfig, train  # noqa: E402
from tl_dashboard.features import head_features  # noqa: E402
from tl_dashboard.stats import accuracy_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def sklearn_probe(cfg: TrainConfig) -> dict:
    from sklearn.linear_model import LogisticRegressionCV

    fs = head_features(cfg)
    x, y = fs.train.numpy(), fs.train_labels.numpy()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegressionCV(Cs=10, cv=5, max_iter=1000).fit(x, y)
    secs = time.perf_counter() - t0
    acc = float(m.score(fs.val.numpy(), fs.val_labels.numpy()))
    return {"accuracy": acc, "seconds": round(secs, 3), "C": float(m.C_[0]), "n_val": len(fs.val_labels)}


def product_run(cfg: TrainConfig) -> dict:
    r = train(cfg)
    s = r.to_dict()
    return {"accuracy": r.val_accuracy, "seconds": r.train_seconds, "epochs": r.epochs,
            "auto": s.get("auto"), "cache_build_seconds": (r.feature_cache or {}).get("build_seconds")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=0, help="0 = the model's own size (224)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--kinds", default="glyphs,shapes,scenes")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl-quality-") as tmp:
        folders = [(k, make_folder(Path(tmp), k, per_class=args.per_class)) for k in args.kinds.split(",") if k]
        folders.append(("emoji3 (sample)", REPO / "sample_data" / "emoji3"))
        for name, folder in folders:
            base = TrainConfig(str(folder), model=args.model, image_size=args.image_size, freeze="head")
            load = os.getloadavg()[0]
            default = product_run(base)
            old = product_run(TrainConfig(str(folder), model=args.model, image_size=args.image_size, freeze="head",
                                          lr=1e-3, epochs=10))
            probe = sklearn_probe(base)
            row = {"folder": name, "n_val": probe["n_val"], "default": default, "old_default": old, "sklearn": probe,
                   "load_avg_before": round(load, 2)}
            rows.append(row)
            print(f"{name}: default {accuracy_text(default['accuracy'], probe['n_val'])} in {default['seconds']:.1f} s | "
                  f"lr 1e-3 x 10 epochs {old['accuracy']:.1%} in {old['seconds']:.1f} s | "
                  f"LogisticRegressionCV {probe['accuracy']:.1%} (C={probe['C']:.3g}, fit {probe['seconds']:.1f} s) | "
                  f"load {load:.1f}", flush=True)
    print("\n| folder | val images | default (auto) | time | lr 1e-3, 10 epochs | time | sklearn LogisticRegressionCV | fit time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, o, s = r["default"], r["old_default"], r["sklearn"]
        print(f"| {r['folder']} | {r['n_val']} | {d['accuracy']:.1%} | {d['seconds']:.1f} s | {o['accuracy']:.1%} | "
              f"{o['seconds']:.1f} s | {s['accuracy']:.1%} | {s['seconds']:.1f} s |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Label issues and the data-efficiency curve on the sample set, measured.

1. **Recall at k of planted label errors.** For each seed, copy ``sample_data/emoji3`` to a tmp
   folder, move ``--plant`` images per class into another class folder (wrong labels), run
   :func:`tl_dashboard.label_issues.find_label_issues` and count how many planted files are among
   the top k suspects, for k = planted and k = 2 x planted; also how many cleanlab flags.
2. **Cost of the head-only data-efficiency curve** against one plain feature pass over the images:
   ``head_features`` alone (empty cache) vs ``data_curve`` (its own empty cache), same process.

Every cache points at a fresh tmp folder. Prints one JSON line per measurement.

    python benchmarks/bench_peers.py --image-size 0 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TL_OFFLINE", "1")

from tests.files import plant_label_errors  # noqa: E402 - after the path insert above


def recall(args, tmp: Path) -> None:
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.label_issues import find_label_issues

    for seed in args.seeds:
        root = tmp / f"emoji3-{seed}"
        shutil.copytree(REPO / "sample_data" / "emoji3", root)
        planted = plant_label_errors(root, args.plant, seed)
        os.environ["TL_CACHE_DIR"] = str(tmp / f"cache-{seed}")
        rep = find_label_issues(TrainConfig(str(root), image_size=args.image_size))
        k = len(planted)
        ranked = [r["path"] for r in rep.ranked]
        print(
            json.dumps(
                {
                    "measure": "label_issues_recall",
                    "seed": seed,
                    "image_size": args.image_size or "weights' own",
                    "images": len(ranked),
                    "planted": k,
                    f"recall@{k}": round(len(set(ranked[:k]) & planted) / k, 3),
                    f"recall@{2 * k}": round(len(set(ranked[: 2 * k]) & planted) / k, 3),
                    "flagged": len(rep.suspects),
                    "planted_flagged": sum(r["path"] in planted for r in rep.suspects),
                    "oos_accuracy": round(rep.oos_accuracy, 3),
                    "seconds": {k2: round(v, 1) for k2, v in rep.seconds.items()},
                }
            ),
            flush=True,
        )


def curve_cost(args, tmp: Path) -> None:
    from tl_dashboard.data_curve import data_curve
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.features import head_features

    cfg = TrainConfig(str(REPO / "sample_data" / "emoji3"), image_size=args.image_size)
    os.environ["TL_CACHE_DIR"] = str(tmp / "cache-pass")
    t0 = time.perf_counter()
    head_features(cfg)
    one_pass = time.perf_counter() - t0
    os.environ["TL_CACHE_DIR"] = str(tmp / "cache-curve")
    t0 = time.perf_counter()
    curve = data_curve(cfg, draws=args.draws)
    total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "measure": "data_curve_cost",
                "image_size": args.image_size or "weights' own",
                "feature_pass_s": round(one_pass, 1),
                "curve_total_s": round(total, 1),
                "ratio": round(total / one_pass, 2),
                "draws": args.draws,
                "points": [(p["n_per_class"], p["mean"], p["min"], p["max"]) for p in curve.points],
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=0, help="0 = the weights' own size (224)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plant", type=int, default=3, help="wrong labels planted per class")
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps({"uptime": os.popen("uptime").read().strip()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        recall(args, Path(tmp))
        curve_cost(args, Path(tmp))


if __name__ == "__main__":
    main()

"""Big folders: head-only training on 2,000 / 20,000 / 100,000 synthetic images, cold and warm.

For each case (N images at P px) it makes a synthetic folder of small JPEGs (in a tmp dir outside
the repository, reused by later invocations), points ``TL_CACHE_DIR`` at a fresh empty folder and
measures, each in its own process:

* ``reference``: one plain inference pass over every image: the files listed with ``rglob``, a torch
  ``DataLoader`` with one worker per core decodes + resizes, the backbone runs in inference mode (the
  floor any method pays; it checks nothing and caches nothing);
* ``first run``: ``engine.train`` head-only on an empty cache (scan + decode into the image cache +
  frozen features computed and stored + the epochs);
* ``second run``: the same run again (scan memo, image cache and feature cache all hit).

Peak memory is the training process's own ``ru_maxrss`` and, sampled every 0.2 s, the summed PSS
of the process and every process under it (decode workers included; a page shared by forked
workers counts once in total). ``ru_maxrss`` of the children is not reported: a forked worker's
includes the pages it shares with its parent. Wall times include process start-up and imports;
``train()`` is the time inside the call.

    python benchmarks/bench_scale.py                       # 2000@96, 20000@96, 20000@224, 100000@96
    python benchmarks/bench_scale.py --cases 2000@96 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square", "bar", "cross")


# -- synthetic data ------------------------------------------------------------------------------
def _make_chunk(args: tuple[str, int, int]) -> None:
    import random

    from PIL import Image, ImageDraw

    root, start, stop = args
    colours = {"circle": (220, 40, 40), "square": (40, 60, 220), "bar": (40, 180, 60), "cross": (200, 160, 30)}
    for i in range(start, stop):
        cls = CLASSES[i % len(CLASSES)]
        rng = random.Random(i)
        w, h = rng.randint(100, 160), rng.randint(80, 140)
        img = Image.new("RGB", (w, h), tuple(rng.randint(80, 170) for _ in range(3)))
        d = ImageDraw.Draw(img)
        s = rng.randint(min(w, h) // 4, min(w, h) // 2)
        x, y = rng.randint(0, w - s), rng.randint(0, h - s)
        c = colours[cls]
        if cls == "circle":
            d.ellipse([x, y, x + s, y + s], fill=c)
        elif cls == "square":
            d.rectangle([x, y, x + s, y + s], fill=c)
        elif cls == "bar":
            d.rectangle([x, 0, x + s // 3, h], fill=c)
        else:
            d.line([x, y, x + s, y + s], fill=c, width=5)
            d.line([x, y + s, x + s, y], fill=c, width=5)
        img.save(Path(root) / cls / f"{i:06d}.jpg", quality=85)


def make_folder(base: Path, n: int) -> Path:
    """``n`` small JPEGs (80-160 px a side, ~3 KB) in 4 classes under ``base/synthetic-<n>`` (reused)."""
    from concurrent.futures import ProcessPoolExecutor

    root = base / f"synthetic-{n}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
    step = 500
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_make_chunk, [(str(root), i, min(n, i + step)) for i in range(0, n, step)]))
    (root / ".complete").write_text(str(n))
    return root


# -- the measured processes ----------------------------------------------------------------------
def child_train(data_dir: str, image_size: int, epochs: int, batch: int, model: str = "efficientnet_lite0", weights: str = "auto") -> dict:
    from tl_dashboard.engine import TrainConfig, train

    r = train(
        TrainConfig(data_dir=data_dir, freeze="head", image_size=image_size, epochs=epochs, batch_size=batch, model=model, weights=weights)
    )
    return {
        "val_acc": r.val_accuracy,
        "feature_cache": r.feature_cache,
        "train_seconds": r.train_seconds,
        "epoch_seconds": [round(h["seconds"], 2) for h in r.history],
    }


def child_infer(data_dir: str, image_size: int, model: str = "efficientnet_lite0", weights: str = "auto") -> dict:
    """One plain inference pass: DataLoader workers decode + resize, the backbone runs once per image."""
    import math

    import torch
    from torch.utils.data import DataLoader, Dataset

    from tl_dashboard.backbones import create_backbone
    from tl_dashboard.data import IMAGE_EXTENSIONS, load_rgb, resize_center_square
    from tl_dashboard.engine import Normalizer, center_crop

    # the plain way lists the files itself: no scan, no check, no cache of any kind
    samples = sorted(str(p) for p in Path(data_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    net, weights = create_backbone(model, len(CLASSES), weights)
    size = image_size or weights.input_size
    L, interp = int(math.floor(size / weights.crop_pct)), weights.interpolation

    class Images(Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int):
            return resize_center_square(load_rgb(samples[i], draft_size=L), L, interp)

    net = net.eval().to(memory_format=torch.channels_last)
    norm = Normalizer(weights.mean, weights.std)
    n = 0
    loader = DataLoader(Images(), batch_size=64, num_workers=os.cpu_count() or 1, prefetch_factor=4)
    with torch.inference_mode():
        for x in loader:
            net(norm(center_crop(x, size)).contiguous(memory_format=torch.channels_last))
            n += len(x)
    return {"images": n}


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_pss(pid: int) -> int:
    """Summed PSS (bytes) of ``pid`` and all its descendants: shared pages counted once in total."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _pss(p)
        todo.extend(kids.get(p, []))
    return total


def run_child(mode: str, args: list[str], cache_dir: Path) -> dict:
    env = {
        **os.environ,
        "TL_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": str(REPO),
        "TL_OFFLINE": "1",
        "TL_CACHE_MAX_GB": os.environ.get("TL_CACHE_MAX_GB", "40"),
    }
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--child", mode, *args], env=env, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while p.poll() is None:
            peak[0] = max(peak[0], _tree_pss(p.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = p.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if p.returncode != 0:
        raise SystemExit(f"{mode} child failed ({p.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "wall": wall, "tree_peak": peak[0]}


def _child_main(mode: str, rest: list[str]) -> None:
    t0 = time.perf_counter()
    if mode == "train":
        out = child_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), *rest[4:6])
    else:
        out = child_infer(rest[0], int(rest[1]), *rest[2:4])
    out["inner_wall"] = time.perf_counter() - t0
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["children_maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(out), flush=True)


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return _child_main(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cases", default="2000@96,20000@96,20000@224,100000@96", help="comma list of IMAGES@PX (PX 0 = the weights' default size, 224)"
    )
    ap.add_argument("--sizes", default="", help="comma list of image counts, each at --image-size (overrides --cases)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tl-bench-scale",
        help="where the synthetic folders go (outside the repository; reused)",
    )
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="auto", help="auto | none (random init: same cost, no download)")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    if args.sizes:
        cases = [(int(n), args.image_size) for n in args.sizes.split(",")]
    else:
        cases = [(int(c.split("@")[0]), int(c.split("@")[1])) for c in args.cases.split(",")]
    if REPO in args.data.absolute().parents:
        raise SystemExit("--data must be outside the repository")
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; head-only "
        f"{args.model} (weights {args.weights}), {args.epochs} epochs, batch {args.batch_size}; load at start {_load()}",
        flush=True,
    )
    rows = []
    for n, px in cases:
        t = time.perf_counter()
        root = make_folder(args.data, n)
        print(f"{n} images: folder ready in {time.perf_counter() - t:.0f} s ({root})", flush=True)
        cache_dir = Path(tempfile.mkdtemp(prefix="tl-bench-cache-"))
        try:
            ref = None if args.skip_reference else run_child("infer", [str(root), str(px), args.model, args.weights], cache_dir)
            train_args = [str(root), str(px), str(args.epochs), str(args.batch_size), args.model, args.weights]
            first = run_child("train", train_args, cache_dir)
            second = run_child("train", train_args, cache_dir)
            disk = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        row = {"n": n, "px": px or 224, "ref": ref, "first": first, "second": second, "cache_bytes": disk, "load": _load()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| images | px | reference pass s | first run s (train()) | first / reference | images/s (first) | "
        "second run s (train()) | first / second | peak RSS (MB) | peak PSS tree (MB) | cache on disk (MB) | "
        "val acc | load after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        f, s, ref = r["first"], r["second"], r["ref"]
        ref_s = f"{ref['wall']:.1f}" if ref else "-"
        ratio = f"{f['wall'] / ref['wall']:.2f}x" if ref else "-"
        rss = max(f["maxrss"], s["maxrss"]) / 2**20
        tree = max(f["tree_peak"], s["tree_peak"]) / 2**20
        print(
            f"| {r['n']:,} | {r['px']} | {ref_s} | {f['wall']:.1f} ({f['train_seconds']:.1f}) | {ratio} | "
            f"{r['n'] / f['wall']:.0f} | {s['wall']:.1f} ({s['train_seconds']:.1f}) | {f['wall'] / s['wall']:.1f}x | "
            f"{rss:.0f} | {tree:.0f} | {r['cache_bytes'] / 2**20:.0f} | {f['val_acc']:.3f} | {r['load']} |"
        )


if __name__ == "__main__":
    main()

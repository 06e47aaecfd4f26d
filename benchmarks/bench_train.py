"""Time the plain way against TL Dashboard's fast path, side by side in one run.

The plain way is the loop a notebook writes: torchvision ``ImageFolder`` + transforms + ``DataLoader``,
every image decoded, resized and pushed through the whole network every epoch (frozen parameters
have ``requires_grad=False``; the optimizer sees only the trainable ones). The fast path is
``tl_dashboard.engine.train``: images decoded once, the frozen prefix computed once per image
(feature cache) or run without autograd.

Both use the same model, weights, split, freeze plan, optimizer, schedule, epochs and seed. They are
run alternately, ``--repeats`` times each, and the medians are compared. For head-only training the
script also times the floor: one inference pass of the backbone over the training and validation
images (decode + forward), which any method must pay at least once.

    python benchmarks/bench_train.py sample_data/emoji3 --epochs 10 --image-size 160 --repeats 2
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tl_dashboard.engine import TrainConfig, prepare, train
from tl_dashboard.layers import trainable_parameters


def plain_train(cfg: TrainConfig) -> dict:
    """The plain loop: ImageFolder-style decoding every epoch, full forward every step."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from tl_dashboard.data import load_rgb

    t0 = time.perf_counter()
    prep = prepare(cfg)
    model, w = prep.model, prep.weights
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}.get(
        w.interpolation, T.InterpolationMode.BICUBIC
    )
    tf = T.Compose(
        [T.Resize(prep.load_size, interpolation=interp), T.CenterCrop(prep.image_size), T.ToTensor(), T.Normalize(w.mean, w.std)]
    )

    class Folder(Dataset):
        def __init__(self, samples):
            self.samples = samples

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            s = self.samples[i]
            return tf(load_rgb(s.path)), s.label

    g = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(Folder(prep.split.train), batch_size=cfg.batch_size, shuffle=True, generator=g)
    val_dl = DataLoader(Folder(prep.split.val), batch_size=64)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = math.ceil(len(prep.split.train) / cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    from tl_dashboard.layers import set_bn_mode

    epoch_times, acc = [], 0.0
    for _ in range(cfg.epochs):
        te = time.perf_counter()
        model.train()
        set_bn_mode(model, prep.blocks, prep.plan)
        for x, y in train_dl:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += (model(x).argmax(1) == y).sum().item()
                n += len(y)
        acc = correct / max(1, n)
        epoch_times.append(time.perf_counter() - te)
    return {"total": time.perf_counter() - t0, "epoch": statistics.median(epoch_times), "val_acc": acc, "images": len(prep.split.train)}


def fast_train(cfg: TrainConfig) -> dict:
    t0 = time.perf_counter()
    r = train(cfg)
    total = time.perf_counter() - t0
    return {
        "total": total,
        "epoch": statistics.median(h["seconds"] for h in r.history),
        "val_acc": r.val_accuracy,
        "images": r.history and round(r.history[0]["images_per_sec"]),
        "cache": r.feature_cache,
    }


def floor_pass(cfg: TrainConfig) -> float:
    """One inference pass of the backbone over train + val images, decoding included."""
    from tl_dashboard.data import DecodedImageCache
    from tl_dashboard.engine import Normalizer, center_crop

    prep = prepare(cfg)
    model = prep.model.eval().to(memory_format=torch.channels_last)  # the floor at its fastest
    t0 = time.perf_counter()
    cache = DecodedImageCache(prep.load_size, interpolation=prep.weights.interpolation)
    x, _ = cache.stack(prep.split.train + prep.split.val)
    norm = Normalizer(prep.weights.mean, prep.weights.std)
    with torch.inference_mode():
        for i in range(0, len(x), 64):
            model(norm(center_crop(x[i : i + 64], prep.image_size)).contiguous(memory_format=torch.channels_last))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--half", default="", help="freeze spec for the 'half frozen' case (default: half the body blocks)")
    args = ap.parse_args()

    from tl_dashboard.layers import describe_blocks

    n_body = sum(b.kind != "head" for b in describe_blocks(args.model, args.image_size))
    half = args.half or str(n_body // 2)
    print(
        f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; model {args.model}, {args.image_size} px, {args.epochs} epochs, "
        f"batch {args.batch_size}, repeats {args.repeats}",
        flush=True,
    )
    rows = []
    for label, freeze in (("head only", "head"), (f"first {half} of {n_body} blocks frozen", half)):
        cfg = TrainConfig(
            data_dir=args.data_dir,
            model=args.model,
            freeze=freeze,
            epochs=args.epochs,
            image_size=args.image_size,
            batch_size=args.batch_size,
        )
        plain, fast = [], []
        for i in range(args.repeats):  # alternate so drift in machine load hits both alike
            plain.append(plain_train(cfg))
            fast.append(fast_train(cfg))
            print(
                f"  {label} repeat {i + 1}: plain {plain[-1]['total']:.1f} s (acc {plain[-1]['val_acc']:.3f}), "
                f"fast {fast[-1]['total']:.1f} s (acc {fast[-1]['val_acc']:.3f})",
                flush=True,
            )
        floor = statistics.median(floor_pass(cfg) for _ in range(args.repeats)) if freeze == "head" else None
        med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
        row = {
            "case": label,
            "plain_total": med(plain, "total"),
            "fast_total": med(fast, "total"),
            "plain_epoch": med(plain, "epoch"),
            "fast_epoch": med(fast, "epoch"),
            "plain_acc": plain[-1]["val_acc"],
            "fast_acc": fast[-1]["val_acc"],
            "n_train": plain[-1]["images"],
            "floor": floor,
            "cache": fast[-1]["cache"],
        }
        rows.append(row)
    print()
    print("| case | path | total s | s/epoch | train img/s | val acc |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        for path in ("plain", "fast"):
            ips = r["n_train"] * args.epochs / r[f"{path}_total"]
            print(f"| {r['case']} | {path} | {r[f'{path}_total']:.1f} | {r[f'{path}_epoch']:.2f} | {ips:.0f} | {r[f'{path}_acc']:.3f} |")
    print()
    for r in rows:
        print(
            f"{r['case']}: fast path {r['plain_total'] / r['fast_total']:.1f}x faster in total than the plain path "
            f"({r['plain_epoch'] / max(r['fast_epoch'], 1e-9):.0f}x per epoch); val acc {r['plain_acc']:.3f} plain vs {r['fast_acc']:.3f} fast; "
            f"feature cache used: {r['cache']['used']} {r['cache'].get('reason') or ''}"
        )
        if r["floor"]:
            print(
                f"  floor (one inference pass over train+val, decode included): {r['floor']:.1f} s; "
                f"fast path total = {r['fast_total'] / r['floor']:.2f}x the floor"
            )


if __name__ == "__main__":
    main()

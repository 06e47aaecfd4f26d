"""Learning-rate range test for any freeze plan (fastai's ``lr_find``).

Train a fresh copy of the run's model (same data, weights, freeze plan, optimizer) for up to
``num_iter`` mini-batches while the learning rate grows exponentially from ``start_lr`` to
``end_lr``; record the loss, smooth it (debiased exponential moving average, beta 0.98), and stop
once the smoothed loss exceeds ``diverge`` times its minimum. Suggestions:

* ``valley_lr`` - fastai's default: inside the longest descending stretch of the curve, a third
  of the way down (robust to a noisy tail). Unlike fastai, the search starts where the smoothed
  loss has fallen by 2% of its total fall and ends at its minimum: with a zero-initialised head
  the loss creeps down from the very first step, and fastai's valley then lands on that flat,
  useless start (measured on the sample set: 2e-4 instead of 3e-3);
* ``steep_lr`` - where the smoothed loss falls fastest per decade of learning rate;
* ``min_lr`` - the minimum's learning rate divided by 10.

``suggested_lr`` is the valley. Head-only plans compute the frozen features once (inference
mode) and sweep only the classifier; other plans run the model with frozen blocks' parameters
out of the optimizer. Nothing is written anywhere.

Example:
    >>> r = lr_find(TrainConfig("sample_data/emoji3"), num_iter=60)   # doctest: +SKIP
    >>> 1e-7 <= r.suggested_lr <= 10                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .data import DecodedImageCache
from .engine import Normalizer, TrainConfig, center_crop, prepare, resolve_device
from .layers import set_bn_mode, trainable_parameters

__all__ = ["LRFindResult", "lr_find", "smooth", "suggest"]


@dataclass
class LRFindResult:
    suggested_lr: float
    valley_lr: float
    steep_lr: float
    min_lr: float
    start_lr: float
    end_lr: float
    iterations: int
    stopped_early: bool  # the loss diverged before end_lr
    seconds: float
    freeze_label: str
    curve: list[dict[str, float]] = field(default_factory=list)  # [{lr, loss (smoothed), raw_loss}]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Debiased exponential moving average (what fastai plots)."""
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(v)
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def _valley(losses: Sequence[float]) -> int:
    """fastai's valley: the longest strictly descending subsequence; a point 1/2 of its first third in."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return min(n - 1, max_start + int(sections) + int(sections / 2))


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """``valley_lr``, ``steep_lr`` and ``min_lr`` from a (smoothed) loss-vs-lr curve."""
    n = len(lrs)
    if n < 3:
        lr = float(lrs[0]) if n else math.nan
        return {"valley_lr": lr, "steep_lr": lr, "min_lr": lr}
    lo, hi = max(0, n // 10), max(n // 10 + 2, n - 2)  # fastai skips the noisy start and the divergent end
    seg_l, seg_y = list(lrs[lo:hi]), list(losses[lo:hi])
    grads = [(seg_y[i + 1] - seg_y[i]) / (math.log(seg_l[i + 1]) - math.log(seg_l[i])) for i in range(len(seg_l) - 1)]
    steep = seg_l[min(range(len(grads)), key=grads.__getitem__)] if grads else seg_l[0]
    i_min = min(range(n), key=lambda i: losses[i])
    # The flat start is not a valley: begin where the loss has fallen by 2% of its total fall.
    drop = losses[0] - losses[i_min]
    first = next((i for i in range(n) if losses[i] < losses[0] - 0.02 * drop), 0) if drop > 0 else 0
    valley = first + _valley(losses[first : i_min + 1]) if i_min > first else i_min
    return {"valley_lr": float(lrs[valley]), "steep_lr": float(steep), "min_lr": float(lrs[i_min]) / 10}


def _trainable_step(
    config: TrainConfig, prep: Any, device: torch.device, progress: Callable[[str], None] | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor]:
    """What one step trains: ``(forward(indices) -> logits, labels, training-set indices)``."""
    model = prep.model.to(device)
    norm = Normalizer(prep.weights.mean, prep.weights.std, device)
    x, y = DecodedImageCache(prep.load_size, interpolation=prep.weights.interpolation).stack(prep.split.train)
    body = [b.name for b in prep.blocks if b.kind != "head"]
    head_only = set(body) <= set(prep.plan.frozen) and not config.augment
    if head_only:  # frozen features once, then only the classifier trains
        if progress:
            progress(f"Computing the frozen features of {len(x)} training images once…")
        model.eval()
        feats = []
        with torch.inference_mode():
            for i in range(0, len(x), 64):
                xb = norm(center_crop(x[i : i + 64], prep.image_size).to(device))
                feats.append(model.forward_head(model.forward_features(xb), pre_logits=True).float())
        f = torch.cat(feats).clone()
        head = model.get_classifier()
        return (lambda idx: head(f[idx])), y.to(device), torch.arange(len(f))

    def forward(idx: torch.Tensor) -> torch.Tensor:
        model.train()
        set_bn_mode(model, prep.blocks, prep.plan)
        xb = x[idx]
        if config.augment:
            from .engine import _augment

            xb = _augment(xb, prep.image_size)
        else:
            xb = center_crop(xb, prep.image_size)
        return model(norm(xb.to(device)))

    return forward, y.to(device), torch.arange(len(x))


def lr_find(
    config: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> LRFindResult:
    """Run the range test; see the module docstring.

    ``progress`` gets a line every 10 steps (the CLI prints it); ``on_step(k, num_iter)`` is called
    after every step k = 1.. (the Train page's progress bar). The sweep may end before
    ``num_iter`` when the loss diverges.

    Raises:
        ValueError: a bad range (``0 < start_lr < end_lr`` and ``num_iter >= 5`` are needed).
        data.DataError, backbones.BackboneError, layers.LayersError: bad input, one clear line.
    """
    if not (0 < start_lr < end_lr) or num_iter < 5:
        raise ValueError(f"lr-find needs 0 < start_lr < end_lr and at least 5 iterations; got {start_lr:g}, {end_lr:g}, {num_iter}.")
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    prep = prepare(config)
    forward, y, pool = _trainable_step(config, prep, device, progress)
    params = trainable_parameters(prep.model)
    opt = torch.optim.AdamW(params, lr=start_lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    bs = max(1, min(config.batch_size, len(pool)))
    order, pos = pool[torch.randperm(len(pool), generator=g)], 0
    ratio = (end_lr / start_lr) ** (1 / (num_iter - 1))
    lrs: list[float] = []
    raw: list[float] = []
    best, stopped = math.inf, False
    for i in range(num_iter):
        if should_stop is not None and should_stop():
            break
        lr = start_lr * ratio**i
        for group in opt.param_groups:
            group["lr"] = lr
        if pos + bs > len(order):
            order, pos = pool[torch.randperm(len(pool), generator=g)], 0
        idx = order[pos : pos + bs]
        pos += bs
        loss = F.cross_entropy(forward(idx).float(), y[idx.to(y.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lrs.append(lr)
        raw.append(float(loss.detach()))
        sm = smooth(raw, beta)[-1]
        best = min(best, sm)
        if on_step is not None:
            on_step(i + 1, num_iter)
        if progress and (i + 1) % 10 == 0:
            progress(f"lr {lr:.2e}: loss {sm:.4f} ({i + 1}/{num_iter})")
        if not math.isfinite(sm) or sm > diverge * best:
            stopped = True
            break
    return _result(lrs, raw, beta, start_lr, end_lr, stopped, t0, prep.plan.label)


def _result(
    lrs: list[float], raw: list[float], beta: float, start_lr: float, end_lr: float, stopped: bool, t0: float, freeze_label: str
) -> LRFindResult:
    """The sweep's smoothed curve (finite points only) and its suggestions, clamped to the swept range."""
    sm_all = smooth(raw, beta)
    keep = [i for i, v in enumerate(sm_all) if math.isfinite(v)]
    lrs_k, sm_k = [lrs[i] for i in keep], [sm_all[i] for i in keep]
    s = suggest(lrs_k, sm_k)

    def clamp(v: float) -> float:
        return float(min(max(v, start_lr), end_lr)) if math.isfinite(v) else start_lr

    return LRFindResult(
        suggested_lr=clamp(s["valley_lr"]),
        valley_lr=clamp(s["valley_lr"]),
        steep_lr=clamp(s["steep_lr"]),
        min_lr=clamp(s["min_lr"]),
        start_lr=start_lr,
        end_lr=end_lr,
        iterations=len(raw),
        stopped_early=stopped,
        seconds=round(time.perf_counter() - t0, 3),
        freeze_label=freeze_label,
        curve=[{"lr": lrs[i], "loss": sm_all[i], "raw_loss": raw[i]} for i in keep],
    )

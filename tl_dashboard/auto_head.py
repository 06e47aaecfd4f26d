"""A classifier head that converges by default: full-batch L-BFGS on cached features.

When only the head trains and the frozen part is cached, training the head is a convex problem:
multinomial logistic regression on the pooled features. Instead of guessing a learning rate and
a number of epochs, :func:`fit_head` solves it:

* the features are centred (train mean; folded back into the bias afterwards; the bias is not
  decayed, so this changes only the solver's conditioning, not the solution);
* the weight decay ``lam`` (loss = mean cross-entropy + lam/2 * ||W||^2, bias not decayed) is
  chosen by stratified k-fold cross-validation **on the training split only** over scikit-learn's
  ``LogisticRegressionCV`` grid (C = 1e-4..1e4; best mean fold accuracy, ties broken by fold
  log-loss), warm-starting along the grid: the same problem as that probe, solved in torch;
* the head is refitted on the whole training split with that ``lam`` by L-BFGS (strong Wolfe line
  search) from zero, until the gradient is flat; every iteration is one full pass over the
  training features and is reported as one "epoch" (train/val loss and accuracy), so the usual
  curves still draw.

The validation split is never used to choose anything: the kept head is the solution.
sklearn's ``LogisticRegression`` minimises ``C * sum(CE) + ||W||^2 / 2``, i.e. ``lam = 1 / (C * N)``.

Example:
    >>> fit = fit_head(torch.randn(60, 8), torch.arange(60) % 3, 3)
    >>> fit.weight.shape, fit.chosen["solver"]
    (torch.Size([3, 8]), 'lbfgs')
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_FOLDS", "HeadFit", "fit_head", "lam_grid", "stratified_folds"]

DEFAULT_FOLDS = 5


def lam_grid(n: int) -> list[float]:
    """Weight decays to try: scikit-learn's ``LogisticRegressionCV`` grid (10 values of C, 1e-4..1e4, log-spaced)
    as ``lam = 1 / (C n)``, strongest first."""
    return [1.0 / (10 ** (-4 + 8 * i / 9) * max(1, n)) for i in range(10)]


@dataclass
class HeadFit:
    """The fitted head in raw-feature space (``logits = features @ weight.T + bias``) and how it was chosen."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    chosen: dict[str, Any]  # solver, weight_decay, equivalent C, folds, cv accuracy per lam, iterations, seconds
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per L-BFGS iteration


def stratified_folds(y: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """Indices of ``k`` folds with each class spread evenly (like sklearn's StratifiedKFold, shuffled)."""
    g = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for j, i in enumerate(idx.tolist()):
            folds[(j + offset) % k].append(i)
        offset += len(idx)
    return [torch.tensor(sorted(f), dtype=torch.long) for f in folds if f]


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    return F.cross_entropy(x @ w.T + b, y) + 0.5 * lam * (w * w).sum()


def _lbfgs(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lam: float,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 200,
    tol: float = 1e-5,
    on_iter: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the regularised cross-entropy; returns ``(weight, bias, iterations)``."""
    d = x.shape[1]
    w = (init[0].clone() if init else torch.zeros(n_classes, d, dtype=x.dtype)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(n_classes, dtype=x.dtype)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=tol, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _objective(x, y, w, b, lam)
        loss.backward()
        return loss

    it, prev = 0, math.inf
    for it in range(1, max_iter + 1):
        loss = float(opt.step(closure).detach())
        if on_iter is not None:
            on_iter(it, w.detach(), b.detach())
        gmax = max(float(w.grad.abs().max()), float(b.grad.abs().max())) if w.grad is not None else 0.0
        if gmax <= tol or abs(prev - loss) <= 1e-9 * max(1.0, abs(loss)):
            break
        prev = loss
    return w.detach(), b.detach(), it


def _fit_folds(
    x: torch.Tensor, onehot: torch.Tensor, train_mask: torch.Tensor, n_train: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One L-BFGS solve of all fold problems at once (weights stacked as ``(folds, C, D)``)."""
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=100, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-4, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(torch.einsum("nd,fcd->fnc", x, w) + b[:, None, :], -1)
        nll = -(logp * onehot).sum(-1)  # (folds, N)
        loss = ((nll * train_mask).sum(1) / n_train).sum() + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _cv_scores(x: torch.Tensor, y: torch.Tensor, n_classes: int, lams: Sequence[float], k: int, seed: int) -> list[tuple[float, float]]:
    """Mean fold (accuracy, log-loss) per lam. The k fold problems are independent, so they are solved
    as one L-BFGS problem over stacked weights (one Python loop instead of k), warm-started along the grid."""
    folds = stratified_folds(y, k, seed)
    train_mask = torch.ones(len(folds), len(y), dtype=x.dtype)
    for f, held in enumerate(folds):
        train_mask[f, held] = 0.0
    held_mask = 1.0 - train_mask
    n_train = train_mask.sum(1)
    onehot = F.one_hot(y, n_classes).to(x.dtype)
    w = torch.zeros(len(folds), n_classes, x.shape[1], dtype=x.dtype)
    b = torch.zeros(len(folds), n_classes, dtype=x.dtype)
    out = []
    for lam in lams:
        w, b = _fit_folds(x, onehot, train_mask, n_train, w, b, lam)
        with torch.no_grad():
            logits = torch.einsum("nd,fcd->fnc", x, w) + b[:, None, :]
            nll = -(torch.log_softmax(logits, -1) * onehot).sum(-1)
            right = (logits.argmax(-1) == y).to(x.dtype)
            n_held = held_mask.sum(1)
            acc = ((right * held_mask).sum(1) / n_held).mean()
            ll = ((nll * held_mask).sum(1) / n_held).mean()
        out.append((float(acc), float(ll)))
    return out


def _row_space(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``(r, D)`` of the span of the rows of ``x`` (r <= min(N, D)).

    With an L2 penalty on W the optimal weights of every class lie in the span of the training
    features (the gradient of the loss always does, and the penalty shrinks anything outside it
    to zero), and so do those of every cross-validation fold, whose images are a subset. Solving
    in these r coordinates instead of the D feature dimensions gives the same solution, D/N times
    cheaper when there are fewer images than features (1280-dimensional features, a few hundred
    images). ``||W||`` is unchanged because the basis is orthonormal.
    """
    if x.shape[0] >= x.shape[1]:
        return torch.eye(x.shape[1], dtype=x.dtype)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    keep = sv > sv.max() * 1e-6 if len(sv) else sv.bool()
    return vh[keep] if int(keep.sum()) else torch.eye(x.shape[1], dtype=x.dtype)


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and a unit scale: centring changes nothing in the optimum (the bias is not decayed) but
    helps L-BFGS; per-feature scaling would change what the weight decay penalises, so none."""
    return x.mean(0), torch.ones(x.shape[1], dtype=x.dtype)


def fit_head(
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    n_classes: int,
    *,
    f_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    weight_decay: float | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    max_iter: int = 200,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HeadFit:
    """Fit a linear head on frozen features; see the module docstring.

    Args:
        f_train, y_train: training features ``(N, D)`` and labels.
        n_classes: number of classes (the head's outputs).
        f_val, y_val: optional validation features, only to report per-iteration curves.
        weight_decay: pin ``lam`` instead of cross-validating it.
        folds: k of the k-fold cross-validation (fewer when the rarest class has fewer images).
        on_epoch: called with each iteration's row (``epoch``, ``train_loss``, ``train_acc``,
            ``val_loss``, ``val_acc``, ``seconds``).
        should_stop: polled after each iteration of the final fit; True ends it early.
    """
    t0 = time.perf_counter()
    x_raw = f_train.detach().float().cpu().clone()  # clones: inference-mode tensors cannot enter autograd
    y = y_train.detach().long().cpu().clone()
    mean, std = _centre(x_raw)
    basis = _row_space(x_raw - mean)  # (r, D): the solution lies in the span of the training features
    x = (x_raw - mean) @ basis.T
    lam, how, k, lams, scores = _choose_lam(x, y, n_classes, weight_decay, folds, seed)
    t_cv = time.perf_counter() - t0
    xv = ((f_val.detach().float().cpu() - mean) @ basis.T) if f_val is not None and len(f_val) else None
    yv = y_val.detach().long().cpu().clone() if y_val is not None else None
    history: list[dict[str, Any]] = []
    state = {"t": time.perf_counter(), "stop": False}

    def report(it: int, w: torch.Tensor, b: torch.Tensor) -> None:
        with torch.no_grad():
            lt = x @ w.T + b
            row = {"epoch": it, "train_loss": float(F.cross_entropy(lt, y)), "train_acc": float((lt.argmax(1) == y).float().mean())}
            if xv is not None and yv is not None:
                lv = xv @ w.T + b
                row.update(val_loss=float(F.cross_entropy(lv, yv)), val_acc=float((lv.argmax(1) == yv).float().mean()))
        now = time.perf_counter()
        row["seconds"] = now - state["t"]
        state["t"] = now
        history.append(row)
        state["w"], state["b"] = w.clone(), b.clone()
        if on_epoch is not None:
            on_epoch(row)
        if should_stop is not None and should_stop():
            raise _Stop()

    stopped = False
    try:
        w, b, iters = _lbfgs(x, y, n_classes, lam, max_iter=max_iter, on_iter=report)
    except _Stop:  # stopped on request: keep the last reported iterate
        stopped, iters, w, b = True, len(history), state["w"], state["b"]
    weight = w @ basis
    bias = b - weight @ mean
    n = max(1, len(y))
    chosen = {
        "solver": "lbfgs",
        "weight_decay": lam,
        "C": 1.0 / (lam * n),
        "selected_by": how,
        "folds": k if weight_decay is None else 0,
        "iterations": iters,
        "cv_seconds": round(t_cv, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "stopped": stopped,
        "cv": [{"weight_decay": lv, "C": 1.0 / (lv * n), "accuracy": a, "log_loss": nl} for lv, (a, nl) in zip(lams, scores)],
    }
    return HeadFit(weight, bias, chosen, history)


def _choose_lam(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float | None, folds: int, seed: int
) -> tuple[float, str, int, list[float], list[tuple[float, float]]]:
    """The ridge strength ``lam`` and how it was chosen: pinned, k-fold cross-validated, or a default.

    Returns ``(lam, how, k, lams, scores)``: k is the number of folds the rarest class allows,
    ``scores`` the (accuracy, log loss) of each of ``lams`` (empty when not cross-validated)."""
    counts = torch.bincount(y, minlength=n_classes)
    k = int(min(folds, counts[counts > 0].min().item() if len(y) else 0))
    lams = lam_grid(len(y))
    scores: list[tuple[float, float]] = []
    if weight_decay is not None:
        lam, how = float(weight_decay), "pinned"
    elif k >= 2:
        scores = _cv_scores(x, y, n_classes, lams, k, seed)
        best = max(range(len(lams)), key=lambda j: (round(scores[j][0], 9), -scores[j][1]))
        lam, how = lams[best], f"{k}-fold cross-validation on the training split"
    else:
        lam, how = 1.0 / len(y) if len(y) else 1e-3, "default (too few images per class to cross-validate)"
    return lam, how, k, lams, scores


class _Stop(Exception):
    pass


def _emit(cbs: Sequence[Any], event: str, *args: Any) -> None:
    for cb in cbs:
        getattr(cb, event)(*args)


def train_cached_head(
    head: torch.nn.Module,
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    f_val: torch.Tensor,
    y_val: torch.Tensor,
    cbs: Sequence[Any],
    *,
    seed: int = 0,
    t_start: float | None = None,
    weight_decay: float | None = None,
    max_iter: int = 200,
    log: Callable[[str, str], None] | None = None,
) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The engine's automatic head phase: fit, emit one epoch per L-BFGS iteration, load the solution into ``head``.

    ``head`` must be an ``nn.Linear`` on the pooled features (``model.get_classifier()``). Callbacks
    receive the usual ``on_epoch_start`` / ``on_step_end`` / ``on_epoch_end`` per iteration; any
    ``should_stop()`` ends the fit with the last iterate kept. Returns ``(history, status, chosen)``.
    """
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"the automatic head needs a linear classifier, not {type(head).__name__}")
    t_start = time.perf_counter() if t_start is None else t_start
    n = len(f_train)
    rows: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        row = {**row, "lr": 0.0, "images_per_sec": n / max(row["seconds"], 1e-9)}
        _emit(cbs, "on_epoch_start", row["epoch"])
        _emit(
            cbs,
            "on_step_end",
            {
                "step": row["epoch"],
                "epoch": float(row["epoch"]),
                "loss": row["train_loss"],
                "lr": 0.0,
                "images": n,
                "total_steps": max_iter,
                "elapsed": time.perf_counter() - t_start,
            },
        )
        rows.append(row)
        _emit(cbs, "on_epoch_end", row)

    fit = fit_head(
        f_train,
        y_train.cpu(),
        head.out_features,
        f_val=f_val,
        y_val=y_val.cpu(),
        seed=seed,
        weight_decay=weight_decay,
        on_epoch=on_epoch,
        max_iter=max_iter,
        should_stop=lambda: any(cb.should_stop() for cb in cbs),
    )
    with torch.no_grad():
        head.weight.copy_(fit.weight.to(head.weight))
        head.bias.copy_(fit.bias.to(head.bias))
    c = fit.chosen
    if log is not None:
        cv = ", ".join(f"C={r['C']:.3g}: {r['accuracy']:.3f}" for r in c["cv"])
        log(
            "info",
            f"Automatic head: multinomial logistic regression by full-batch L-BFGS on the cached features; "
            f"weight decay {c['weight_decay']:.3g} (C={c['C']:.3g}) chosen by {c['selected_by']}"
            + (f" (mean fold accuracy {cv})" if cv else "")
            + f"; converged in {c['iterations']} iterations "
            f"({c['seconds']:.2f} s, {c['cv_seconds']:.2f} s of it cross-validation). "
            "Each iteration is one pass over the training features, shown as one epoch.",
        )
    return rows, "stopped" if c["stopped"] else "finished", c


#: What "auto" means where the solver cannot run (images change per epoch, or blocks train).
FALLBACK_LR, FALLBACK_EPOCHS, MAX_ITER = 1e-3, 10, 200


def resolve(config: Any, plan: Any, blocks: Sequence[Any], world: int = 1) -> tuple[Any, dict[str, Any]]:
    """Turn ``lr == 0`` / ``epochs == 0`` ("auto") into what the run does.

    Returns ``(config with a concrete lr and epochs for the optimizer loop, auto)`` where ``auto`` is
    ``{"solver": bool, "lr": "auto"|"pinned", "epochs": "auto"|"pinned", "max_iter": int, "note": str}``.
    The solver runs when the learning rate and the epochs are both auto and only the head trains on
    features that can be cached (no augmentation, cache not off, no unfreeze schedule, one
    process). A pinned value means AdamW for exactly that: what is still auto falls back to lr 1e-3
    and 10 epochs (the Train page's finder or ``tl-dashboard lr-find`` suggests a learning rate).
    """
    from dataclasses import replace

    lr_auto, ep_auto = config.lr == 0, config.epochs == 0
    head_only = all(b.name in plan.frozen for b in blocks if b.kind != "head")
    cacheable = head_only and not config.augment and config.feature_cache != "off" and config.unfreeze_at <= 0 and world == 1
    solver = lr_auto and ep_auto and cacheable
    out = {
        "solver": solver,
        "lr": "auto" if lr_auto else "pinned",
        "epochs": "auto" if ep_auto else "pinned",
        "max_iter": MAX_ITER if solver else 0,
    }
    if solver:
        out["note"] = (
            "lr and epochs auto: the head is fitted by L-BFGS on the cached features with its weight "
            "decay cross-validated on the training split"
        )
    elif lr_auto or ep_auto:
        pinned = " and ".join(
            x
            for x in (
                f"lr is pinned to {config.lr:g}" if not lr_auto else "",
                f"epochs is pinned to {config.epochs}" if not ep_auto else "",
            )
            if x
        )
        why = (
            f"{pinned}, which means AdamW for exactly that"
            if cacheable
            else "only the head trains but its input changes every epoch (augmentation, unfreeze schedule, cache off or several processes)"
            if head_only
            else "blocks of the backbone train"
        )
        out["note"] = (
            f"auto: {why}, so the solver cannot run; "
            + ", ".join(x for x in (f"lr {FALLBACK_LR:g}" if lr_auto else "", f"{FALLBACK_EPOCHS} epochs" if ep_auto else "") if x)
            + " (tl-dashboard lr-find or the Train page's finder suggests a learning rate)"
        )
    else:
        out["note"] = ""
    resolved = replace(config, lr=config.lr or FALLBACK_LR, epochs=config.epochs or FALLBACK_EPOCHS)
    return resolved, out

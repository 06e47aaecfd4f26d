"""Frozen features of a data set: the input of the classifier head, for every image.

The linear probe, the learning-rate finder on cached features, label-issue ranking (k-fold on
features) and the data-efficiency curve all start from the same thing: the backbone's pooled
pre-logits features for every training and validation image, computed once with the frozen
backbone in inference mode. :func:`head_features` is the one place that computes them.

Example:
    >>> from tl_dashboard.engine import TrainConfig
    >>> fs = head_features(TrainConfig("sample_data/emoji3", image_size=96))  # doctest: +SKIP
    >>> fs.train.shape                                                        # doctest: +SKIP
    torch.Size([144, 1280])
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .data import DecodedImageCache
from .engine import Normalizer, TrainConfig, center_crop, prepare

__all__ = ["FeatureSet", "head_features"]


@dataclass
class FeatureSet:
    """Pooled pre-logits features and labels for a data set's train and validation splits."""

    train: torch.Tensor  # (N_train, D) float32
    train_labels: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val, D) float32
    val_labels: torch.Tensor  # (N_val,) int64
    classes: list[str]
    train_paths: list[str]
    val_paths: list[str]
    weights_source: str  # where the backbone's weights came from ("bundled", "none", ...)


@torch.inference_mode()
def head_features(config: TrainConfig, *, batch: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """Compute the frozen backbone's pooled features for every image of ``config.data_dir``.

    Args:
        config: data folder, model, weights, image size, split fraction and seed are used; the
            freeze plan is ignored (the whole backbone is frozen here).
        batch: images per forward pass.
        progress: called with ``(done, total)`` images after each batch.

    Returns:
        The :class:`FeatureSet`.

    Raises:
        data.DataError, backbones.BackboneError: bad folder or model, one clear line.
    """
    prep = prepare(replace(config, freeze="head"))
    model = prep.model.eval()
    norm = Normalizer(prep.weights.mean, prep.weights.std)
    cache = DecodedImageCache(prep.load_size, interpolation=prep.weights.interpolation)
    total = len(prep.split.train) + len(prep.split.val)
    done = 0
    out = []
    for samples in (prep.split.train, prep.split.val):
        x, y = cache.stack(samples)
        feats = []
        for i in range(0, len(x), batch):
            xb = norm(center_crop(x[i:i + batch], prep.image_size))
            feats.append(model.forward_head(model.forward_features(xb), pre_logits=True).float())
            done += len(xb)
            if progress is not None:
                progress(done, total)
        dim = model.num_features
        out.append((torch.cat(feats) if feats else torch.empty((0, dim)), y))
    (f_train, y_train), (f_val, y_val) = out
    return FeatureSet(f_train, y_train, f_val, y_val, list(prep.split.classes),
                      [str(s.path) for s in prep.split.train], [str(s.path) for s in prep.split.val],
                      prep.weights.source)

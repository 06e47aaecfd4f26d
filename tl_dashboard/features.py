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

from .engine import Normalizer, TrainConfig, _place_model, center_crop, prepare
from .featstore import open_features, prefix_key
from .imagestore import open_images

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
def head_features(config: TrainConfig, *, batch: int = 64, progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """The frozen backbone's pooled features for every image of ``config.data_dir``.

    Computed once per image set, model, weights and size, then read from the on-disk cache
    (:mod:`.featstore`): a second call, or a call after a run that cached the same features, is fast.

    Args:
        config: data folder, model, weights, image size, split fraction and seed are used; the
            freeze plan is ignored (the whole backbone is frozen here).
        batch: images per forward pass.
        progress: called with ``(done, total)`` images after each batch (once with the total on a cache hit).

    Returns:
        The :class:`FeatureSet`.

    Raises:
        data.DataError, backbones.BackboneError: bad folder or model, one clear line.
    """
    prep = prepare(replace(config, freeze="head"))
    model = prep.model.eval()
    nhwc = _place_model(model, torch.device("cpu"))  # as a head-only run computes them: they share the cache entry
    norm = Normalizer(prep.weights.mean, prep.weights.std)
    store, digests = open_images(prep.split, prep.load_size, prep.weights.interpolation, image_size=prep.image_size)

    def compute(x: torch.Tensor) -> torch.Tensor:
        x = norm(center_crop(x, prep.image_size))
        x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
        return model.forward_head(model.forward_features(x), pre_logits=True).float()

    total = len(store)
    feats = open_features(store, prefix_key(prep, "head", nhwc), compute, batch=batch, progress=progress)
    if progress is not None and feats.hit:
        progress(total, total)
    out = []
    for samples in (prep.split.train, prep.split.val):
        x = feats.read(store.rows(samples, digests)) if samples else torch.empty((0, model.num_features))
        out.append((x, torch.tensor([int(s.label) for s in samples], dtype=torch.int64)))
    store.close()
    (f_train, y_train), (f_val, y_val) = out
    return FeatureSet(
        f_train,
        y_train,
        f_val,
        y_val,
        list(prep.split.classes),
        [str(s.path) for s in prep.split.train],
        [str(s.path) for s in prep.split.val],
        prep.weights.source,
    )

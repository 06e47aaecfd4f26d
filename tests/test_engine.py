import math

import pytest
import torch

from tl_dashboard.engine import Callback, Normalizer, TrainConfig, center_crop, load_checkpoint, prepare, train


def _cfg(data, **kw):
    base = dict(data_dir=str(data), epochs=2, batch_size=8, image_size=32, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _block_tensors(model, blocks, name, buffers=False):
    mods = [m for b in blocks if b.name == name for m in b.modules]
    items = model.state_dict().items() if buffers else model.named_parameters()
    return {k: v.detach().clone() for k, v in items if any(k == m or k.startswith(m + ".") for m in mods)}


def test_frozen_blocks_stay_bit_identical_trainable_ones_move_bn_stats_fixed(shapes_dir, tmp_path):
    cfg = _cfg(shapes_dir, freeze="3", feature_cache="off")
    before = prepare(cfg)
    init = {k: v.clone() for k, v in before.model.state_dict().items()}
    train(cfg, out_dir=tmp_path)
    after, _, meta = load_checkpoint(tmp_path)
    sd = after.state_dict()
    frozen = [
        k
        for b in before.blocks
        if b.name in ("stem", "blocks.0", "blocks.1")
        for k in _block_tensors(before.model, before.blocks, b.name, buffers=True)
    ]
    assert frozen and all(torch.equal(sd[k], init[k]) for k in frozen)  # weights AND BN running stats
    moved = [k for k in _block_tensors(before.model, before.blocks, "blocks.4") if not torch.equal(sd[k], init[k])]
    assert moved, "a trainable block did not change"
    assert not torch.equal(sd["classifier.weight"], init["classifier.weight"])
    assert meta["frozen_blocks"] == ["stem", "blocks.0", "blocks.1"]


def test_bn_mode_train_updates_running_stats_of_frozen_blocks_but_not_weights(shapes_dir, tmp_path):
    cfg = _cfg(shapes_dir, freeze="3", bn_mode="train", epochs=1)
    init = {k: v.clone() for k, v in prepare(cfg).model.state_dict().items()}
    result = train(cfg, out_dir=tmp_path)
    assert result.feature_cache["used"] is False and "BatchNorm" in result.feature_cache["reason"]
    sd = load_checkpoint(tmp_path)[0].state_dict()
    assert torch.equal(sd["conv_stem.weight"], init["conv_stem.weight"])
    assert not torch.equal(sd["bn1.running_mean"], init["bn1.running_mean"])


def test_same_seed_same_numbers_and_other_seed_differs(shapes_dir):
    a = train(_cfg(shapes_dir, freeze="none", epochs=1))
    b = train(_cfg(shapes_dir, freeze="none", epochs=1))
    c = train(_cfg(shapes_dir, freeze="none", epochs=1, seed=1))
    key = lambda r: [(h["train_loss"], h["val_loss"], h["val_acc"]) for h in r.history]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


@pytest.mark.parametrize("freeze", ["head", "4"])
def test_feature_cache_gives_the_same_results_as_the_full_path(shapes_dir, freeze):
    cached = train(_cfg(shapes_dir, freeze=freeze, epochs=3))
    full = train(_cfg(shapes_dir, freeze=freeze, epochs=3, feature_cache="off"))
    assert cached.feature_cache["used"] is True and full.feature_cache["used"] is False
    assert cached.feature_cache["frozen_prefix_blocks"] == (9 if freeze == "head" else 4)
    assert abs(cached.val_accuracy - full.val_accuracy) <= 0.01
    for hc, hf in zip(cached.history, full.history):
        assert math.isclose(hc["train_loss"], hf["train_loss"], rel_tol=1e-3, abs_tol=1e-4)
        assert math.isclose(hc["val_loss"], hf["val_loss"], rel_tol=1e-3, abs_tol=1e-4)


def test_cache_falls_back_and_says_why(shapes_dir):
    logs = []

    class Log(Callback):
        def on_log(self, level, message):
            logs.append(message)

    aug = train(_cfg(shapes_dir, augment=True, epochs=1), [Log()])
    assert not aug.feature_cache["used"] and "augmentation" in aug.feature_cache["reason"]
    assert any("augmentation" in m for m in logs)
    big = train(_cfg(shapes_dir, freeze="2", cache_max_mb=0, epochs=1))
    assert not big.feature_cache["used"] and "MB" in big.feature_cache["reason"]
    assert big.feature_cache["estimated_mb"] > 0
    none = train(_cfg(shapes_dir, freeze="none", epochs=1))
    assert not none.feature_cache["used"]


def test_optimizer_only_sees_trainable_params_and_counts_add_up(shapes_dir):
    r = train(_cfg(shapes_dir, freeze="head", epochs=1))
    p = prepare(_cfg(shapes_dir, freeze="head"))
    assert r.trainable_params == p.model.get_classifier().weight.numel() + p.model.get_classifier().bias.numel()
    assert r.trainable_params + r.frozen_params == sum(x.numel() for x in p.model.parameters())


def test_events_in_order_and_stop_between_batches(shapes_dir, tmp_path):
    events = []

    class Rec(Callback):
        def on_run_start(self, info):
            events.append("run_start")

        def on_epoch_start(self, epoch):
            events.append("epoch_start")

        def on_step_end(self, step):
            events.append("step")

        def on_epoch_end(self, row):
            events.append("epoch_end")

        def on_run_end(self, result):
            events.append("run_end")

        def should_stop(self):
            return events.count("step") >= 3

    r = train(_cfg(shapes_dir, epochs=5, batch_size=4, freeze="none"), [Rec()], out_dir=tmp_path)
    assert r.status == "stopped" and events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("step") == 3
    assert (tmp_path / "model.safetensors").exists()  # stopping writes a final checkpoint


def test_per_step_and_per_epoch_metrics(shapes_dir):
    steps = []

    class Rec(Callback):
        def on_step_end(self, step):
            steps.append(step)

    r = train(_cfg(shapes_dir, epochs=2, batch_size=4), [Rec()])
    assert len(steps) == 2 * math.ceil(len(steps) / 2) and steps[-1]["epoch"] == pytest.approx(2.0)
    assert steps[0]["lr"] > steps[-1]["lr"]  # cosine decay
    for h in r.history:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "seconds"} <= set(h)
        assert 0 <= h["val_acc"] <= 1 and h["images_per_sec"] > 0


def test_center_crop_and_normalizer():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.uint8).view(2, 3, 6, 5)
    crop = center_crop(x, 3)
    assert crop.shape == (2, 3, 3, 3) and torch.equal(crop, x[..., 1:4, 1:4])
    norm = Normalizer((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    out = norm(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert out.dtype == torch.float32 and out[0, :, 0, 0].tolist() == [1.0, 3.0, 1.0]  # (x / 255 - mean) / std


def test_unfreeze_schedule_unfreezes_the_last_blocks_at_a_lower_lr(shapes_dir, tmp_path):
    logs, infos = [], []

    class Rec(Callback):
        def on_log(self, level, message):
            logs.append(message)

        def on_run_start(self, info):
            infos.append(info["unfreeze"])

    cfg = _cfg(shapes_dir, freeze="head", epochs=3, unfreeze_at=2, unfreeze_blocks=2, backbone_lr_scale=0.1)
    init = {k: v.clone() for k, v in prepare(cfg).model.state_dict().items()}
    r = train(cfg, [Rec()], out_dir=tmp_path)
    assert infos == [{"epoch": 2, "blocks": ["blocks.6", "neck"], "lr_scale": 0.1}]
    assert any("unfroze blocks.6, neck" in str(m) for m in logs)
    # only the prefix that stays frozen all run is cached
    assert r.feature_cache["used"] and r.feature_cache["frozen_prefix_blocks"] == 7
    sd = load_checkpoint(tmp_path)[0].state_dict()
    assert not torch.equal(sd["conv_head.weight"], init["conv_head.weight"])  # unfrozen, trained
    assert torch.equal(sd["blocks.5.0.conv_pw.weight"], init["blocks.5.0.conv_pw.weight"])  # still frozen
    with pytest.raises(ValueError, match="unfreeze-at 1"):
        train(_cfg(shapes_dir, unfreeze_at=1))

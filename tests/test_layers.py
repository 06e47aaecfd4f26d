import pytest
import timm
import torch

from tl_dashboard.layers import LayersError, apply_freeze, count_params, describe_blocks, list_blocks, parse_freeze, trainable_parameters

FAMILIES = ["efficientnet_lite0", "mobilenetv3_small_100", "resnet18", "vit_tiny_patch16_224"]


@pytest.mark.parametrize("name", FAMILIES)
def test_blocks_cover_every_parameter_once_and_stages_compose_to_forward(name):
    model = timm.create_model(name, num_classes=3, drop_rate=0.0).eval()
    blocks = list_blocks(model, 224 if "vit" in name else 96)
    assert blocks[0].name == "stem" and blocks[-1].name == "head"
    assert sum(b.params for b in blocks) == count_params(model)
    owners = [sum(n in b.param_names(model) for b in blocks) for n, _ in model.named_parameters()]
    assert set(owners) == {1}
    x = torch.randn(2, 3, 224 if "vit" in name else 96, 224 if "vit" in name else 96)
    h = x
    for b in blocks[:-1]:
        h = b.stage(h)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(h), model(x), atol=1e-5)
    assert blocks[-1].output_shape == (3,)


def test_other_timm_models_fall_back_to_timm_grouping():
    blocks = describe_blocks("convnext_atto", 64)
    names = [b.name for b in blocks]
    assert names[0] == "stem" and names[-1] == "head" and len(names) == len(set(names))


def test_parse_freeze_variants_and_errors():
    blocks = describe_blocks("resnet18", 64)
    assert parse_freeze("head", blocks).frozen == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert parse_freeze("none", blocks).frozen == []
    assert parse_freeze("2", blocks).frozen == ["stem", "layer1"]
    assert parse_freeze("5", blocks).spec == "head"
    assert parse_freeze("layer3,stem", blocks).frozen == ["stem", "layer3"]
    with pytest.raises(LayersError, match="layer9"):
        parse_freeze("layer9", blocks)
    with pytest.raises(LayersError, match="0..5"):
        parse_freeze("9", blocks)
    with pytest.raises(LayersError, match="BatchNorm"):
        parse_freeze("head", blocks, bn_mode="sometimes")


def test_apply_freeze_sets_requires_grad_by_block():
    model = timm.create_model("resnet18", num_classes=2)
    blocks = list_blocks(model, 64)
    plan = parse_freeze("3", blocks)
    apply_freeze(model, blocks, plan)
    assert not model.conv1.weight.requires_grad and not model.layer2[0].conv1.weight.requires_grad
    assert model.layer3[0].conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert count_params(model, True) == sum(b.params for b in blocks[3:])
    assert sum(p.numel() for p in trainable_parameters(model)) == count_params(model, True)
    assert plan.frozen_prefix(blocks) == 3

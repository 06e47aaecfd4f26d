"""Blocks and freezing: the one place that knows what a "block" is.

A model is seen as a list of blocks in forward order: ``stem``, each stage of the body, an
optional ``neck`` (e.g. the 1x1 head convolution), and the ``head`` (the new classifier).
A :class:`FreezePlan` says which blocks are frozen; :func:`apply_freeze` sets ``requires_grad``
and keeps BatchNorm layers of frozen blocks on their running statistics (unless ``bn_mode="train"``).

For the curated families (EfficientNet/MobileNetV3, ResNet, ViT) each non-head block also has a
*stage*: a callable so that running the stages in order equals ``model.forward_features``. That
lets the engine run a frozen prefix once and cache its output (see ``engine.FeatureCache``).
Other timm models fall back to timm's own grouping (``model.group_matcher``) without stages.

Example:
    >>> import timm
    >>> m = timm.create_model("resnet18", num_classes=3)
    >>> [b.name for b in list_blocks(m)]
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import UserError

__all__ = [
    "Block",
    "FreezePlan",
    "LayersError",
    "list_blocks",
    "parse_freeze",
    "apply_freeze",
    "set_bn_mode",
    "trainable_parameters",
    "count_params",
    "describe_blocks",
    "FREEZE_PRESETS",
    "normalize_freeze",
    "freeze_label",
    "preset_of",
    "frozen_from_spec",
    "spec_from_frozen",
]

Stage = Callable[[torch.Tensor], torch.Tensor]


class LayersError(UserError, ValueError):
    """A freeze plan that does not fit the model; str() names the bad value and the choices."""


@dataclass
class Block:
    """One freezable unit of a model, in forward order."""

    index: int
    name: str  # "stem", "blocks.3", "layer2", "neck", "head"
    kind: str  # "stem" | "body" | "neck" | "head"
    modules: list[str]  # top-level module/parameter names that make up this block
    params: int = 0
    output_shape: tuple[int, ...] | None = None  # per image, from a dummy forward
    stage: Stage | None = field(default=None, repr=False, compare=False)

    def param_names(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if _owner(n, self.modules)]


def _owner(param_name: str, modules: Sequence[str]) -> bool:
    return any(param_name == m or param_name.startswith(m + ".") for m in modules)


def count_params(model: nn.Module, trainable: bool | None = None) -> int:
    """Number of parameters (all, only trainable, or only frozen)."""
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


def _has(model: nn.Module, *names: str) -> bool:
    return all(hasattr(model, n) for n in names)


def _family_blocks(model: nn.Module) -> list[Block] | None:
    """Blocks with stages for the curated families; None for other models."""
    head = str(model.pretrained_cfg.get("classifier", "classifier"))
    blocks: list[Block] = []

    def add(name: str, kind: str, modules: list[str], stage: Stage | None) -> None:
        mods = [m for m in modules if hasattr(model, m.split(".")[0])]
        blocks.append(Block(len(blocks), name, kind, mods, stage=stage))

    if _has(model, "conv_stem", "bn1", "blocks") and isinstance(model.blocks, nn.Sequential):
        add("stem", "stem", ["conv_stem", "bn1"], lambda x: model.bn1(model.conv_stem(x)))
        for i, blk in enumerate(model.blocks):
            add(f"blocks.{i}", "body", [f"blocks.{i}"], blk)
        if _has(model, "bn2"):  # EfficientNet: conv_head + bn2 inside forward_features
            add("neck", "neck", ["conv_head", "bn2"], lambda x: model.bn2(model.conv_head(x)))
        elif _has(model, "conv_head"):  # MobileNetV3: conv_head runs after pooling, in forward_head
            add("neck", "neck", ["conv_head", "norm_head"], lambda x: x)
    elif _has(model, "conv1", "bn1", "layer1", "layer4", "fc"):

        def stem(x: torch.Tensor) -> torch.Tensor:
            return model.maxpool(model.act1(model.bn1(model.conv1(x))))

        add("stem", "stem", ["conv1", "bn1"], stem)
        for i in range(1, 5):
            add(f"layer{i}", "body", [f"layer{i}"], getattr(model, f"layer{i}"))
    elif _has(model, "patch_embed", "_pos_embed", "blocks", "norm") and isinstance(model.blocks, nn.Sequential):

        def vit_stem(x: torch.Tensor) -> torch.Tensor:
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

        add("stem", "stem", ["cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"], vit_stem)
        for i, blk in enumerate(model.blocks):
            add(f"blocks.{i}", "body", [f"blocks.{i}"], blk)
        add("norm", "neck", ["norm", "fc_norm", "attn_pool"], model.norm)
    else:
        return None
    add("head", "head", [head], None)
    return blocks


def _timm_group_blocks(model: nn.Module) -> list[Block]:
    """Fallback: timm's coarse parameter groups in order, with the classifier split off as head."""
    from timm.models import group_parameters

    head = str(model.pretrained_cfg.get("classifier", "classifier"))
    groups = group_parameters(model, model.group_matcher(coarse=True))
    blocks: list[Block] = []
    for gid, names in groups.items():
        body = [n for n in names if not _owner(n, [head])]
        if not body:
            continue
        tops = list(dict.fromkeys(_module_of(n) for n in body))
        name = "stem" if not blocks else (tops[0] if len(tops) == 1 else f"group{gid}")
        if name == "head" or any(b.name == name for b in blocks):
            name = f"group{gid}"
        blocks.append(Block(len(blocks), name, "stem" if not blocks else "body", tops))
    blocks.append(Block(len(blocks), "head", "head", [head]))
    return blocks


def _module_of(param_name: str) -> str:
    """'blocks.3.0.conv.weight' -> 'blocks.3'; 'layer2.0.conv1.weight' -> 'layer2'; 'cls_token' -> 'cls_token'."""
    parts = param_name.split(".")
    if len(parts) >= 3 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0] if len(parts) > 1 else param_name


def list_blocks(model: nn.Module, image_size: int | None = 224, *, with_shapes: bool = True) -> list[Block]:
    """The model's freezable blocks in forward order with parameter counts and output shapes.

    Args:
        model: a timm model.
        image_size: input side for the dummy forward that measures output shapes.
        with_shapes: skip the dummy forward when False.

    Returns:
        Blocks, the last one being the classifier ``head``. Every parameter belongs to exactly
        one block (parameters no rule claims join the block before them).
    """
    blocks = _family_blocks(model) or _timm_group_blocks(model)
    owner: dict[str, int] = {}
    last = 0
    for n, p in model.named_parameters():
        idx = next((b.index for b in blocks if _owner(n, b.modules)), None)
        if idx is None:  # unclaimed parameter: belongs with the block before it
            idx = last
            blocks[idx].modules.append(n)
        owner[n] = idx
        last = idx
        blocks[idx].params += p.numel()
    if with_shapes and image_size:
        _measure_shapes(model, blocks, image_size)
    return blocks


@torch.no_grad()
def _measure_shapes(model: nn.Module, blocks: list[Block], image_size: int) -> None:
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, image_size, image_size)
        if all(b.stage is not None for b in blocks if b.kind != "head"):
            for b in blocks:
                if b.kind == "head":
                    x = model.forward_head(x)
                else:
                    x = b.stage(x)
                b.output_shape = tuple(x.shape[1:])
        else:  # hook the last module of each block
            outs: dict[int, tuple[int, ...]] = {}
            handles = []
            mods = dict(model.named_modules())
            for b in blocks:
                for m in b.modules:
                    if m in mods:
                        handles.append(
                            mods[m].register_forward_hook(
                                lambda _m, _i, o, i=b.index: outs.__setitem__(i, tuple(o.shape[1:])) if torch.is_tensor(o) else None
                            )
                        )
            try:
                model(x)
            finally:
                for h in handles:
                    h.remove()
            for b in blocks:
                b.output_shape = outs.get(b.index)
    except Exception:  # shapes are informative only (e.g. fixed-size models)
        pass
    finally:
        model.train(was_training)


# -- freeze specs: the words a user types ("head", "none", "3", "stem,blocks.0") -----------------
# Presets of the Model page, keyed by what preset_of() returns.
FREEZE_PRESETS = {"head": "Linear probe (head only)", "first": "Freeze first N", "none": "Full fine-tune", "custom": "Custom"}
_HEAD_WORDS = ("head", "all", "linear")
_NONE_WORDS = ("none", "0", "")


def normalize_freeze(spec: str | int) -> str:
    """A spec in its canonical words: ``all``/``linear`` -> ``head``, ``0``/empty -> ``none``.

    Example:
        >>> [normalize_freeze(s) for s in ("all", " 0", "3", "stem, blocks.0")]
        ['head', 'none', '3', 'stem, blocks.0']
    """
    spec = str(spec).strip()
    if spec in _HEAD_WORDS:
        return "head"
    return "none" if spec in _NONE_WORDS else spec


def freeze_label(spec: str | int) -> str:
    """Human label of a freeze spec ("head only (linear probe)", "first 3 blocks frozen", ...)."""
    spec = normalize_freeze(spec)
    if spec == "head":
        return "head only (linear probe)"
    if spec == "none":
        return "full fine-tune"
    if spec.isdigit():
        return f"first {spec} blocks frozen"
    return f"frozen: {spec}"


def _body(blocks: Sequence[Block]) -> list[str]:
    return [b.name for b in blocks if b.kind != "head"]


def preset_of(spec: str | int, blocks: Sequence[Block] | None = None) -> str:
    """Which preset of :data:`FREEZE_PRESETS` a spec belongs to: ``head``, ``first``, ``none`` or ``custom``."""
    spec = normalize_freeze(spec)
    if spec in ("head", "none"):
        return spec
    if spec.isdigit():
        return "head" if blocks is not None and int(spec) >= len(_body(blocks)) else "first"
    return "custom"


def frozen_from_spec(spec: str | int, blocks: Sequence[Block]) -> list[str]:
    """The frozen block names a spec means for these blocks (unknown names are dropped, never raised)."""
    body, kind = _body(blocks), preset_of(spec, blocks)
    if kind == "head":
        return body
    if kind == "none":
        return []
    if kind == "first":
        return body[: int(normalize_freeze(spec))]
    names = {s.strip() for s in str(spec).split(",")}
    return [n for n in body if n in names]


def spec_from_frozen(blocks: Sequence[Block], frozen: Sequence[str]) -> str:
    """The shortest spec for a set of frozen blocks: ``head``, ``none``, ``N`` or ``a,b``."""
    body = _body(blocks)
    chosen = [n for n in body if n in set(frozen)]
    if not chosen:
        return "none"
    if len(chosen) == len(body):
        return "head"
    if chosen == body[: len(chosen)]:
        return str(len(chosen))
    return ",".join(chosen)


@dataclass
class FreezePlan:
    """Which blocks are frozen. Build one with :func:`parse_freeze`."""

    frozen: list[str]  # block names, a subset of the non-head blocks
    spec: str  # what the user asked for: "head", "none", "3", "stem,blocks.0"
    bn_mode: str = "frozen"  # "frozen": BN of frozen blocks uses running stats; "train": they update

    @property
    def label(self) -> str:
        return freeze_label(self.spec)

    def frozen_prefix(self, blocks: Sequence[Block]) -> int:
        """How many leading blocks are frozen (the part whose output can be cached)."""
        k = 0
        for b in blocks:
            if b.name in self.frozen:
                k += 1
            else:
                break
        return k


def parse_freeze(spec: str | int, blocks: Sequence[Block], bn_mode: str = "frozen") -> FreezePlan:
    """Turn ``"head" | "none" | N | "name,name"`` into a :class:`FreezePlan` for these blocks.

    ``head`` freezes every block but the classifier (linear probe); ``none`` freezes nothing
    (full fine-tune); ``N`` freezes the first N blocks; a comma list freezes those blocks.

    Raises:
        LayersError: unknown block name, N out of range, or an unknown bn_mode.
    """
    if bn_mode not in ("frozen", "train"):
        raise LayersError(f"Unknown BatchNorm mode {bn_mode!r}: use 'frozen' or 'train'.")
    spec = normalize_freeze(spec)
    body = _body(blocks)
    if spec == "head":
        return FreezePlan(body, "head", bn_mode)
    if spec == "none":
        return FreezePlan([], "none", bn_mode)
    if spec.isdigit():
        n = int(spec)
        if n > len(body):
            raise LayersError(f"--freeze {n} is more than this model's {len(body)} freezable blocks; use 0..{len(body)} or 'head'.")
        return FreezePlan(body[:n], "head" if n == len(body) else str(n), bn_mode)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in body]
    if unknown:
        raise LayersError(f"Unknown block {unknown[0]!r} in --freeze. Blocks of this model: {', '.join(body)} (the head always trains).")
    ordered = [n for n in body if n in names]
    return FreezePlan(ordered, ",".join(ordered), bn_mode)


def describe_blocks(model_name: str, image_size: int | None = None, num_classes: int = 2) -> list[Block]:
    """Blocks of a timm model by name, without loading weights (for the UI and ``tl-dashboard layers``).

    The returned blocks carry no stage callables, so they can be cached and pickled.

    Raises:
        LayersError: unknown model name.
    """
    return [replace(b, modules=list(b.modules)) for b in _described(model_name, image_size, num_classes)]  # callers may edit theirs


@functools.lru_cache(maxsize=16)
def _described(model_name: str, image_size: int | None, num_classes: int) -> tuple[Block, ...]:
    """Build the model and measure its blocks once per process: it takes a forward pass (about
    0.2 s for a small CNN on a CPU), and the Train and Model pages ask on every full run."""
    import timm

    if not timm.is_model(model_name):
        raise LayersError(f"Unknown model {model_name!r}. `tl-dashboard layers --list` shows the curated ones.")
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    size = image_size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    blocks = list_blocks(model, size)
    for b in blocks:
        b.stage = None
    return tuple(blocks)


def _bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def apply_freeze(model: nn.Module, blocks: Sequence[Block], plan: FreezePlan) -> None:
    """Set ``requires_grad`` by the plan: frozen blocks False, every other parameter True."""
    frozen_mods = [m for b in blocks if b.name in plan.frozen for m in b.modules]
    for n, p in model.named_parameters():
        p.requires_grad_(not _owner(n, frozen_mods))


def set_bn_mode(model: nn.Module, blocks: Sequence[Block], plan: FreezePlan) -> None:
    """Call after ``model.train()``: BN layers of frozen blocks go to eval (running stats) unless bn_mode='train'."""
    if plan.bn_mode == "train":
        return
    mods = dict(model.named_modules())
    for b in blocks:
        if b.name not in plan.frozen:
            continue
        for m in b.modules:
            if m in mods:
                for bn in _bn_layers(mods[m]):
                    bn.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer should see: only those with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]

"""Take a trained run away: ``safetensors``, ``torchscript`` and ``onnx`` files, each with
``labels.json`` and ``preprocessing.json`` beside it, each checked against the run's model before it
is moved into place (:func:`export_run`).

Loading an export on its own (every format takes float32 NCHW input, RGB, preprocessed as
``preprocessing.json`` says; the output is logits, one per class in ``labels.json`` order)::

    import json, numpy as np
    from PIL import Image, ImageOps
    d = "runs/RUN_ID/export"
    labels = json.load(open(f"{d}/labels.json")); pp = json.load(open(f"{d}/preprocessing.json"))

    def preprocess(path):  # shorter side -> load_size, centre crop load_size, then image_size
        img, L, S = Image.open(path), pp["load_size"], pp["image_size"]
        img.draft("RGB", (L, L))  # JPEGs: decode at reduced scale, as training did
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        img = img.resize((L, max(L, int(L * h / w))) if w <= h else (max(L, int(L * w / h)), L), Image.Resampling.BICUBIC)
        l, t = (img.width - L) // 2 + (L - S) // 2, (img.height - L) // 2 + (L - S) // 2
        x = (np.asarray(img.crop((l, t, l + S, t + S)), np.float32) / 255 - pp["mean"]) / pp["std"]
        return x.transpose(2, 0, 1)[None].astype(np.float32)

    # TorchScript: torch only
    import torch
    m = torch.jit.load(f"{d}/model.torchscript.pt")
    print(labels[m(torch.from_numpy(preprocess("cat.jpg"))).argmax()])

    # ONNX: onnxruntime only
    import onnxruntime as ort
    s = ort.InferenceSession(f"{d}/model.onnx")
    print(labels[s.run(None, {"input": preprocess("cat.jpg")})[0].argmax()])

    # safetensors: timm + safetensors
    import timm, torch; from safetensors.torch import load_file
    m = timm.create_model(pp["model"], num_classes=len(labels)).eval()
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)):
        bn.eps = pp.get("bn_eps") or bn.eps  # the bundled efficientnet_lite0 weights need 1e-3
    m.load_state_dict(load_file(f"{d}/model.safetensors"))
    print(labels[m(torch.from_numpy(preprocess("cat.jpg"))).argmax()])

(``pp["interpolation"]`` names the resize filter, bicubic for the curated backbones.)

This module never imports streamlit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .inference import EvaluateError, LoadedRun, RunSource, as_loaded
from .runs import CHECKPOINT, atomic_write_json

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "export_run"]

#: Export formats and the file each one writes (``labels.json`` and ``preprocessing.json`` go beside all).
EXPORT_FORMATS: dict[str, str] = {"safetensors": CHECKPOINT, "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
ONNX_OPSET = 18


class ExportExists(UserError, FileExistsError):
    """The export folder already holds files (or is a file): pick another or pass overwrite=True."""


def _parse_formats(formats: str | Iterable[str]) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = list(dict.fromkeys(str(f).strip().lower() for f in items if str(f).strip()))
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown or not names:
        what = f"Unknown export format {unknown[0]!r}" if unknown else "No export format given"
        raise EvaluateError(f"{what}; choose from {', '.join(EXPORT_FORMATS)} (e.g. formats=('onnx',) or --format safetensors,onnx).")
    return names


def _tmp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(name)


def _check_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max()))):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        raise RuntimeError(
            f"The {name} export does not reproduce the model (max |diff| {diff:.3g}, "
            f"shapes {got.shape} vs {want.shape}); nothing was written."
        )


def _write_torchscript(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: np.ndarray, final: Path) -> None:
    tmp = _tmp_path(final)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still loads everywhere
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            with torch.inference_mode():
                got = reloaded(check).float().numpy()
        _check_close("TorchScript", got, want)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _write_onnx(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: np.ndarray, final: Path) -> str:
    """Export with torch's dynamo exporter (legacy TorchScript exporter as a fallback). Returns which ran."""
    import onnxruntime as ort

    tmp = _tmp_path(final)
    exporter = "dynamo"
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(devnull):  # the dynamo exporter prints progress lines
                io = dict(input_names=["input"], output_names=["logits"])
                try:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        **io,
                        opset_version=ONNX_OPSET,
                        dynamo=True,
                        external_data=False,
                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                        verbose=False,
                    )
                except Exception:  # some models only export with the legacy exporter
                    exporter = "torchscript"
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        **io,
                        opset_version=17,
                        dynamo=False,
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
        del session
        _check_close("ONNX", np.asarray(got, dtype=np.float32), want)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for extra in final.parent.glob(f"{tmp.name}*"):  # external-data side files, if an exporter wrote any
        extra.unlink(missing_ok=True)
    return exporter


def export_run(
    store: RunSource,
    run_id: str | None = None,
    formats: str | Iterable[str] = tuple(EXPORT_FORMATS),
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Export a run's model; each file is checked against the model before it is moved into place.

    Every format takes float32 input ``(batch, 3, S, S)`` preprocessed as ``preprocessing.json``
    says, and returns logits in ``labels.json`` order. See the module docstring for loading each
    one in a few lines. Files are written to a temporary name and renamed, so a reader never sees
    half a file.

    Args:
        store: a :class:`RunStore` (with ``run_id``), a run folder, or a loaded run.
        run_id: the run's id.
        formats: any of ``"safetensors"`` (the weights: load with timm), ``"torchscript"``
            (``torch.jit.load`` alone), ``"onnx"`` (opset 18, dynamic batch axis, onnxruntime);
            a sequence or a comma-separated string.
        out_dir: destination folder; default ``<run folder>/export`` (earlier exports there are
            replaced).
        overwrite: allow replacing files of the same names in a user-given ``out_dir``.

    Returns:
        ``{format: path}`` for each format, plus ``"labels"`` and ``"preprocessing"``.

    Raises:
        ValueError: an unknown format (the message lists the choices).
        FileExistsError: ``out_dir`` was given, already holds files of these names and
            ``overwrite`` is False.
        EvaluateError: no such run or no checkpoint.
        RuntimeError: an export did not reproduce the model's outputs (nothing of it is written).
    """
    names = _parse_formats(formats)
    loaded = as_loaded(store, run_id)
    targets = _targets(loaded, names, out_dir, overwrite)
    info = _write_models(loaded, names, targets)
    atomic_write_json(targets["labels"], list(loaded.classes))
    atomic_write_json(targets["preprocessing"], _export_meta(loaded, info))
    return targets


def _targets(loaded: LoadedRun, names: list[str], out_dir: str | Path | None, overwrite: bool) -> dict[str, Path]:
    """``{format: path}`` plus labels and preprocessing, in a folder that exists; refuses to overwrite
    a user-given folder's files unless asked."""
    if out_dir is None:
        dest, user_dir = loaded.run_dir / "export", False
    else:
        dest, user_dir = Path(out_dir).expanduser(), True
    if dest.exists() and not dest.is_dir():
        raise ExportExists(f"Export folder {dest} is a file; pick a folder.")
    targets = {f: dest / EXPORT_FORMATS[f] for f in names}
    targets.update(labels=dest / "labels.json", preprocessing=dest / "preprocessing.json")
    if user_dir and not overwrite:
        taken = [p.name for p in targets.values() if p.exists()]
        if taken:
            raise ExportExists(
                f"{dest} already holds {', '.join(taken)}. Pick an empty folder, or pass overwrite=True (CLI: --overwrite) to replace them."
            )
    dest.mkdir(parents=True, exist_ok=True)
    return targets


def _write_models(loaded: LoadedRun, names: list[str], targets: dict[str, Path]) -> dict[str, Any]:
    """Write each format, each checked against the model's own outputs. Returns: ONNX exporter facts."""
    model, size = loaded.model, int(loaded.meta["image_size"])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, size, size, generator=gen)
    check = torch.randn(3, 3, size, size, generator=gen)  # batch 3: checks the batch axis is dynamic too
    with torch.inference_mode():
        want = model(check).float().numpy()
    info: dict[str, Any] = {}
    for f in names:
        if f == "safetensors":
            tmp = _tmp_path(targets[f])
            try:
                shutil.copyfile(loaded.run_dir / CHECKPOINT, tmp)
                os.replace(tmp, targets[f])
            finally:
                tmp.unlink(missing_ok=True)
        elif f == "torchscript":
            _write_torchscript(model, example, check, want, targets[f])
        elif f == "onnx":
            info["onnx_exporter"] = _write_onnx(model, example, check, want, targets[f])
            info["onnx_opset"] = ONNX_OPSET if info["onnx_exporter"] == "dynamo" else 17
    return info


def _export_meta(loaded: LoadedRun, info: dict[str, Any]) -> dict[str, Any]:
    """``preprocessing.json`` of an export: the run's preprocessing plus how to feed the files."""
    import timm

    meta, size = loaded.meta, int(loaded.meta["image_size"])
    return {
        **meta,
        "export": {
            "run_id": loaded.run_id,
            "input_name": "input",
            "output_name": "logits",
            "input": f"float32 (batch, 3, {size}, {size}), RGB, (x / 255 - mean) / std",
            "resize": f"shorter side to load_size ({meta['load_size']}) with {meta.get('interpolation', 'bicubic')}, "
            f"centre crop load_size, then centre crop image_size ({size})",
            "output": "logits, one per class in labels.json order (softmax for probabilities)",
            "torch": torch.__version__,
            "timm": timm.__version__,
            **info,
        },
    }

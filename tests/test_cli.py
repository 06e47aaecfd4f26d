import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tl_dashboard.cli import main


def _json_tail(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _odd_files_folder(root: Path) -> tuple[Path, set[str], set[str]]:
    """Good files in odd forms + bad files, in two classes."""
    import io

    a, b = root / "alpha", root / "beta"
    a.mkdir(parents=True)
    b.mkdir()
    good, bad = set(), set()
    for d, colour in ((a, (200, 30, 30)), (b, (30, 30, 200))):
        for i in range(4):
            Image.new("RGB", (48, 40), colour).save(d / f"plain_{i}.png")
            good.add(str(d / f"plain_{i}.png"))
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(a / "cmyk.jpg")
    Image.new("I;16", (40, 40), 40000).save(a / "sixteen.png")
    Image.new("RGBA", (40, 40), (200, 0, 0, 128)).save(b / "rgba.png")
    Image.new("RGB", (40, 40), (0, 0, 200)).convert("P").save(b / "palette.gif")
    ex = Image.new("RGB", (60, 30), (0, 0, 200))
    exif = ex.getexif()
    exif[0x0112] = 6
    ex.save(b / "rotated.jpg", exif=exif)
    Image.effect_noise((3000, 3000), 40).convert("RGB").save(a / "big_photo.jpg", quality=70)
    Image.new("RGB", (40, 40), (210, 20, 20)).save(a / "café_ñ_猫.jpg")
    good |= {str(a / n) for n in ("cmyk.jpg", "sixteen.png", "big_photo.jpg", "café_ñ_猫.jpg")}
    good |= {str(b / n) for n in ("rgba.png", "palette.gif", "rotated.jpg")}
    (a / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (b / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (a / "text.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(b / "tiny.png")
    bad |= {str(a / "zero.jpg"), str(b / "truncated.jpg"), str(a / "text.png"), str(b / "tiny.png")}
    return root, good, bad


@pytest.mark.slow
def test_train_json_on_a_folder_laced_with_bad_files(tmp_path, capsys):
    root, good, bad = _odd_files_folder(tmp_path / "odd")
    code = main(["train", str(root), "--json", "--epochs", "1", "--image-size", "32", "--runs-dir", str(tmp_path / "runs")])
    out = _json_tail(capsys.readouterr().out)
    assert code == 0, out
    for key in (
        "run_id",
        "status",
        "val_accuracy",
        "train_seconds",
        "epochs",
        "trainable_params",
        "frozen_params",
        "weights",
        "skipped_files",
    ):
        assert key in out
    assert out["status"] == "finished" and out["weights"] == "bundled" and out["epochs"] == 1
    skipped = {s["path"]: s["reason"] for s in out["skipped_files"]}
    assert set(skipped) == bad
    assert "empty" in skipped[str(root / "alpha" / "zero.jpg")]
    assert "too small" in skipped[str(root / "beta" / "tiny.png")]
    from tl_dashboard.runs import RunStore

    s = RunStore(tmp_path / "runs").get_run(out["run_id"])["summary"]
    assert s["train_images"] + s["val_images"] == len(good)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "/definitely/not/here"], "not found"),
        (["train", "{one}"], "only one class"),
        (["train", "{shapes}", "--model", "nope_net"], "Unknown model"),
        (["train", "{shapes}", "--weights", "/no/such.pth"], "not found"),
        (["train", "{shapes}", "--freeze", "blocks.99"], "Unknown block"),
    ],
)
def test_errors_exit_nonzero_with_one_clear_line(tmp_path, shapes_dir, capsys, args, needle):
    one = tmp_path / "one" / "cats"
    one.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20)).save(one / f"{i}.png")
    args = [a.format(one=tmp_path / "one", shapes=shapes_dir) for a in args] + ["--runs-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_layers_and_runs_json(tmp_path, capsys):
    assert main(["layers", "resnet18", "--json"]) == 0
    out = _json_tail(capsys.readouterr().out)
    assert [b["name"] for b in out["blocks"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert main(["runs", "--json", "--runs-dir", str(tmp_path)]) == 0
    assert _json_tail(capsys.readouterr().out) == []


@pytest.mark.slow
def test_module_entry_point_train_then_predict(tmp_path, shapes_dir):
    cmd = [sys.executable, "-m", "tl_dashboard.cli"]
    r = subprocess.run(
        cmd + ["train", str(shapes_dir), "--json", "--epochs", "1", "--image-size", "32", "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    run_id = _json_tail(r.stdout)["run_id"]
    img = next((shapes_dir / "circles").iterdir())
    r = subprocess.run(
        cmd + ["predict", run_id, str(img), "--json", "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    preds = _json_tail(r.stdout)[0]["top_k"]
    assert preds[0]["prob"] >= preds[-1]["prob"] and abs(sum(p["prob"] for p in preds) - 1) < 1e-3


@pytest.mark.slow
def test_export_writes_each_format_and_refuses_to_overwrite(tmp_path, shapes_dir, capsys):
    assert main(["train", str(shapes_dir), "--json", "--epochs", "1", "--image-size", "32", "--runs-dir", str(tmp_path / "runs")]) == 0
    run_id = _json_tail(capsys.readouterr().out)["run_id"]
    out = tmp_path / "exported"
    args = ["export", run_id, "--format", "safetensors,torchscript,onnx", "--out", str(out), "--json", "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    paths = _json_tail(capsys.readouterr().out)
    for key in ("safetensors", "torchscript", "onnx", "labels", "preprocessing"):
        assert Path(paths[key]).is_file()
    assert main(args) == 2  # the user's folder is not overwritten silently
    assert "overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["export", run_id, "--format", "pickle", "--runs-dir", str(tmp_path / "runs")]) == 2

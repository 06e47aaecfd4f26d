"""Tests for tl_dashboard.evaluate and pages/evaluate.py: metrics, predictions, Grad-CAM, embeddings, export."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_dashboard import charts, explain, export, inference, metrics
from tl_dashboard import evaluate as ev
from tl_dashboard.data import DecodedImageCache, scan_images
from tl_dashboard.engine import TrainConfig
from tl_dashboard.runs import RunStore
from tl_dashboard.worker import run_training

ROOT = Path(__file__).resolve().parents[1]
EMOJI = ROOT / "sample_data" / "emoji3"
APP = ROOT / "app.py"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def offline():
    """No hub probe: efficientnet_lite0 takes its bundled weights, in training and in embeddings()."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run on emoji3: efficientnet_lite0 (bundled weights), head only, 64 px, 2 epochs."""
    store = RunStore(tmp_path_factory.mktemp("runs"))
    cfg = TrainConfig(data_dir=str(EMOJI), epochs=2, image_size=64, batch_size=16)
    run_id = store.create_run(cfg.to_dict())
    store.mark_running(run_id, os.getpid(), socket.gethostname())
    result = run_training(store, run_id)
    assert result is not None and result.status == "finished"
    return store, run_id


@pytest.fixture(scope="module")
def evaluation(run):
    store, run_id = run
    return ev.evaluate_run(store, run_id)


@pytest.fixture(scope="module")
def exported(run):
    store, run_id = run
    return ev.export_run(store, run_id)  # all three formats, into <run>/export


def _val_inputs(store: RunStore, run_id: str) -> tuple[torch.Tensor, list[str]]:
    """The validation images as the model sees them (the training decoder + crop + normalisation)."""
    loaded = ev.load_run(store, run_id)
    meta, cfg = loaded.meta, TrainConfig.from_dict(loaded.config)
    split = scan_images(cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    x_u8, _ = DecodedImageCache(meta["load_size"], interpolation=meta["interpolation"]).stack(split.val)
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1) * 255
    s, L = meta["image_size"], meta["load_size"]
    o = (L - s) // 2
    return (x_u8[..., o : o + s, o : o + s].float() - mean) / std, [str(p.path) for p in split.val]


# ----------------------------------------------------------------------------- metrics
def test_classification_report_matches_hand_computed_case():
    # cm = [[2,1,0,0],[0,2,0,0],[0,1,0,0],[0,0,0,0]]: class 3 never occurs, class 2 is never predicted.
    rows = ev.classification_report([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 1, 1], 4, ["a", "b", "c", "d"])
    got = {r["class"]: (r["precision"], r["recall"], r["f1"], r["support"]) for r in rows}
    assert got["a"] == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert got["b"] == pytest.approx((0.5, 1.0, 2 / 3, 2))
    assert got["c"] == (0.0, 0.0, 0.0, 1)  # zero division -> 0, not NaN
    assert got["d"] == (0.0, 0.0, 0.0, 0)
    assert [r["class"] for r in rows] == ["a", "b", "c", "d"]


def test_confusion_matrix_rows_are_true_columns_predicted():
    cm = ev.confusion_matrix([0, 0, 1, 2], [1, 0, 1, 2], 3)
    assert cm[0][1] == 1 and cm[1][0] == 0  # a true 0 predicted as 1 lands at [0][1]
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="outside 0..2"):
        ev.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="one prediction per label"):
        ev.confusion_matrix([0, 1], [0], 3)


def test_evaluate_run_matches_training_and_sorts_mistakes(run, evaluation):
    store, run_id = run
    e = evaluation
    summary = store.get_run(run_id)["summary"]
    n = len(e.paths)
    assert n == summary["val_images"] == 36 and e.classes == summary["classes"]
    assert e.accuracy == pytest.approx(summary["val_accuracy"], abs=1e-9)  # same model, same inputs as training
    assert e.probs.shape == (n, 3) and np.allclose(e.probs.sum(1), 1, atol=1e-5)
    assert e.confusion.sum() == n and np.trace(e.confusion) / n == pytest.approx(e.accuracy)
    assert [r["support"] for r in e.report] == e.confusion.sum(1).tolist()
    wrong = e.misclassified
    assert len(wrong) == n - np.trace(e.confusion) > 0
    assert all(m["true"] != m["pred"] and m["true_name"] == e.classes[m["true"]] for m in wrong)
    losses = [m["loss"] for m in wrong]
    assert losses == sorted(losses, reverse=True)  # worst first
    assert all(m["confidence"] == pytest.approx(e.probs[e.paths.index(m["path"]), m["pred"]]) for m in wrong)


def test_evaluate_errors_name_the_problem(run, tmp_path):
    store, _ = run
    with pytest.raises(ev.EvaluateError, match="No run 'nope'"):
        ev.evaluate_run(store, "nope")
    queued = store.create_run(TrainConfig(data_dir=str(EMOJI)).to_dict())
    with pytest.raises(ev.EvaluateError, match="no model.safetensors"):
        ev.evaluate_run(store, queued)
    store.request_stop(queued)  # queued -> cancelled
    store.delete_run(queued)


# ----------------------------------------------------------------------------- predict
def test_predict_returns_sorted_topk_summing_to_one(run, evaluation):
    store, run_id = run
    paths = [evaluation.misclassified[0]["path"], evaluation.paths[0]]
    preds = ev.predict_images(store, paths + [Path(paths[0]).read_bytes()], top_k=5, run_id=run_id)
    assert len(preds) == 3
    for p, path in zip(preds, paths + paths[:1]):
        probs = [q for _, q in p.top]
        assert len(p.top) == 3  # capped at the number of classes
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert p.probs.sum() == pytest.approx(1, abs=1e-5)
        assert p.top[0][0] == evaluation.classes[evaluation.y_pred[evaluation.paths.index(path)]]
        assert p.cam is not None and p.cam.shape == (p.image.height, p.image.width)
    np.testing.assert_array_equal(preds[0].probs, preds[2].probs)  # bytes decode exactly like the path
    assert preds[0].probs == pytest.approx(evaluation.probs[evaluation.paths.index(paths[0])], abs=1e-5)
    one = ev.predict_images(store, [Image.open(paths[1])], top_k=1, run_id=run_id, cam=False)[0]
    assert len(one.top) == 1 and one.cam is None
    with pytest.raises(ValueError, match="top_k"):
        ev.predict_images(store, paths, top_k=0, run_id=run_id)


# ----------------------------------------------------------------------------- Grad-CAM
def _meta(size: int) -> dict:
    return {"load_size": int(size / 0.875), "image_size": size, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}


def _picture(w: int, h: int) -> Image.Image:
    img = Image.open(EMOJI / "animals" / "animals_000.jpg").convert("RGB")
    return img.resize((w, h))


@pytest.mark.parametrize("name,size", [("resnet18", 96), ("vit_tiny_patch16_224", 224)])
def test_grad_cam_map_has_image_size_and_is_not_constant(name, size):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    img = _picture(260, 200)
    cam = ev.grad_cam(model, _meta(size), img)
    assert cam.shape == (200, 260) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0
    left, top, right, bottom = (round(v) for v in explain._crop_box(260, 200, _meta(size)))
    inside = cam[top:bottom, left:right]
    assert inside.std() > 0.01  # not constant where the model looks
    assert cam[:, :left].max() == 0 and cam[:, right:].max() == 0  # outside the centre crop: nothing
    other = ev.grad_cam(model, _meta(size), img, target=int(model(torch.zeros(1, 3, size, size)).argmin()))
    assert other.shape == cam.shape
    with pytest.raises(ValueError, match="target"):
        ev.grad_cam(model, _meta(size), img, target=7)


def test_overlay_heatmap_keeps_size_and_leaves_cold_pixels_alone():
    img = _picture(80, 60)
    cam = np.zeros((60, 80), np.float32)
    assert np.array_equal(np.asarray(ev.overlay_heatmap(img, cam, desaturate=0)), np.asarray(img))
    cam[20:40, 30:50] = 1.0
    out = ev.overlay_heatmap(img, cam, desaturate=0)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out)[30, 40], np.asarray(img)[30, 40])
    assert np.array_equal(np.asarray(out)[5, 5], np.asarray(img)[5, 5])
    with pytest.raises(ValueError, match="alpha"):
        ev.overlay_heatmap(img, cam, alpha=2)


# ----------------------------------------------------------------------------- embeddings
def test_embeddings_before_and_after(run, tmp_path):
    store, run_id = run
    emb = ev.embeddings(store, run_id)
    n = len(emb["labels"])
    assert n == 36 and emb["classes"] == ["animals", "food", "vehicles"] and len(emb["paths"]) == n
    for key in ("before", "after"):
        assert emb[key]["points"].shape == (n, 2) and np.isfinite(emb[key]["points"]).all()
        assert 0 < emb[key]["explained"][1] <= emb[key]["explained"][0] <= 1
    # head-only training leaves the backbone as it was: the two views coincide, and the page says why
    assert emb["features_changed"] is False and "frozen" in emb["notes"][-1]
    np.testing.assert_allclose(emb["before"]["points"], emb["after"]["points"], atol=1e-3)

    # a changed backbone (a copy of the run with one body weight nudged) gives different features
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(store.run_dir(run_id), copy, ignore=shutil.ignore_patterns("export"))
    sd = load_file(str(copy / "model.safetensors"))
    sd["conv_stem.weight"] = sd["conv_stem.weight"] * 1.5
    save_file(sd, str(copy / "model.safetensors"))
    assert ev.embeddings(copy, max_images=9)["features_changed"] is True


# ----------------------------------------------------------------------------- export
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_round_trips_agree_with_the_model_on_every_validation_image(run, exported):
    import onnxruntime as ort
    import timm
    from safetensors.torch import load_file

    store, run_id = run
    export_dir = store.run_dir(run_id) / "export"
    assert {k: p.name for k, p in exported.items()} == {
        "safetensors": "model.safetensors",
        "torchscript": "model.torchscript.pt",
        "onnx": "model.onnx",
        "labels": "labels.json",
        "preprocessing": "preprocessing.json",
    }
    assert all(p.parent == export_dir and p.is_file() for p in exported.values())
    assert sorted(os.listdir(export_dir)) == sorted(p.name for p in exported.values())  # no temp files left
    labels = json.loads(exported["labels"].read_text())
    pp = json.loads(exported["preprocessing"].read_text())
    assert labels == ["animals", "food", "vehicles"] and pp["image_size"] == 64 and pp["export"]["onnx_opset"] >= 17

    x, _ = _val_inputs(store, run_id)
    with torch.inference_mode():
        want = ev.load_run(store, run_id).model(x).numpy()
        scripted = torch.jit.load(str(exported["torchscript"]))(x).numpy()
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    onnx_out = session.run(None, {"input": x.numpy()})[0]
    m = timm.create_model(pp["model"], num_classes=len(labels)).eval()
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)):
        bn.eps = pp.get("bn_eps") or bn.eps
    m.load_state_dict(load_file(str(exported["safetensors"])))
    with torch.inference_mode():
        reloaded = m(x).numpy()
    for name, got in (("torchscript", scripted), ("onnx", onnx_out), ("safetensors", reloaded)):
        assert np.array_equal(got.argmax(1), want.argmax(1)), name
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=name)


def _docstring_snippet() -> str:
    doc = export.__doc__
    start = doc.index("order)::\n\n") + len("order)::\n\n")
    return textwrap.dedent(doc[start : doc.index('\n(``pp["interpolation"]``')])


def test_readme_snippets_load_each_format_on_its_own(run, exported, evaluation):
    """The documented snippets run as written; TorchScript and ONNX need neither timm nor this package."""
    store, run_id = run
    code = _docstring_snippet().replace('"runs/RUN_ID/export"', repr(str(exported["onnx"].parent)))
    code = code.replace('"cat.jpg"', "P").replace("print(", "OUT.append(")
    standalone, with_timm = code.split("# safetensors: timm + safetensors")
    paths = [m["path"] for m in evaluation.misclassified[:2]] + evaluation.paths[:2]
    script = textwrap.dedent(f"""
        import json, sys
        res = {{}}
        for part in ({standalone!r}, {with_timm!r}):
            for P in {paths!r}:
                OUT = []
                exec(part)
                res.setdefault(P, []).extend(OUT)
            assert "timm" in part or not {{"timm", "tl_dashboard"}} & set(sys.modules), "needs more than torch/onnxruntime"
        print(json.dumps([res[p] for p in {paths!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = [evaluation.classes[evaluation.y_pred[evaluation.paths.index(p)]] for p in paths]
    assert got == [[w, w, w] for w in want]


def test_export_refuses_unknown_formats(run, tmp_path):
    store, run_id = run
    with pytest.raises(ValueError, match="Unknown export format 'tflite'; choose from safetensors, torchscript, onnx"):
        ev.export_run(store, run_id, formats=("onnx", "tflite"), out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="No export format given"):
        ev.export_run(store, run_id, formats="")
    assert not (tmp_path / "x").exists()


def test_export_never_overwrites_a_user_folder_silently(run, tmp_path):
    store, run_id = run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "labels.json").write_text("my own file")
    with pytest.raises(FileExistsError, match="already holds labels.json.*overwrite=True"):
        ev.export_run(store, run_id, formats="safetensors", out_dir=out)
    assert (out / "labels.json").read_text() == "my own file" and sorted(os.listdir(out)) == ["labels.json"]
    paths = ev.export_run(store, run_id, formats="safetensors", out_dir=out, overwrite=True)
    assert json.loads(paths["labels"].read_text()) == ["animals", "food", "vehicles"]
    assert paths["safetensors"].read_bytes() == (store.run_dir(run_id) / "model.safetensors").read_bytes()
    # the default folder inside the run is the app's own: re-exporting replaces the previous export
    first = ev.export_run(store, run_id, formats=["safetensors"])
    assert ev.export_run(store, run_id, formats=["safetensors"]) == first


# ----------------------------------------------------------------------------- figures
def test_figures_label_their_axes(evaluation):
    e = evaluation
    fig = charts.confusion_figure(e.confusion, e.classes)
    assert "rows = true class, columns = predicted" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "Predicted class" and fig.layout.yaxis.title.text == "True class"
    assert list(fig.data[0].x) == e.classes and list(fig.data[0].y) == e.classes
    assert np.array_equal(np.asarray(fig.data[0].text), e.confusion) and fig.data[0].texttemplate == "%{text}"
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 (the first true class) at the top
    assert [t.name for t in charts.per_class_figure(e.report).data] == ["precision", "recall", "F1"]
    top = charts.topk_figure([("food", 0.7), ("animals", 0.2)])
    assert list(top.data[0].y) == ["food", "animals"] and top.layout.xaxis.range == (0, 1)
    pred = ev.Prediction("x.png", Image.new("RGB", (4, 4)), [("food", 0.7), ("animals", 0.2)], np.zeros(3))
    assert charts.topk_figure(pred).to_dict() == top.to_dict()  # a Prediction draws as its top list
    emb = charts.embedding_figure(np.zeros((4, 2)), [0, 1, 2, 0], e.classes, "After", [0.5, 0.2])
    assert [t.name for t in emb.data] == e.classes and "50%" in emb.layout.xaxis.title.text


def test_evaluate_draws_nothing_itself():
    """Figures have one home, charts.py: evaluation computes, it never imports plotly."""
    for module in (ev, inference, metrics, explain, export):
        assert "plotly" not in Path(module.__file__).read_text(), module.__name__


# ----------------------------------------------------------------------------- page
def _open_page(monkeypatch, runs_dir: Path):
    """The app as a browser opens it: the router first, then the Evaluate page."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TL_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_renders_a_finished_run(run, evaluation, monkeypatch):
    store, run_id = run
    at = _open_page(monkeypatch, store.root)
    assert at.title[0].value == "Evaluate"
    assert at.selectbox(key="ev_run").value == run_id
    assert [m.label for m in at.metric] == ["Validation accuracy", "Macro F1", "Validation images", "Misclassified"]
    assert at.metric[0].value == f"{evaluation.accuracy:.1%}"
    assert [t.label for t in at.tabs] == ["Metrics", "Mistakes", "Predict", "Embeddings", "Export"]
    assert len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 2  # per-class bars + confusion heatmap

    at.session_state["ev_tab"] = "Mistakes"
    at.run()
    assert not at.exception and len(at.image) == min(24, len(evaluation.misclassified))

    at.session_state["ev_tab"] = "Predict"
    at.run()
    assert not at.exception and at.radio(key="ev_source").value == "A validation image"
    assert len(at.image) == 1 and len(at.get("plotly_chart")) == 1  # Grad-CAM overlay + top-k bars

    at.session_state["ev_tab"] = "Embeddings"
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 2

    at.session_state["ev_tab"] = "Export"
    at.run()
    at.multiselect(key="ev_formats").set_value(["safetensors"]).run()
    at.button(key="ev_export").click().run()
    assert not at.exception and not at.error
    assert len(at.get("download_button")) == 3  # model.safetensors, labels.json, preprocessing.json


def test_page_without_finished_runs_points_to_train(tmp_path, monkeypatch):
    at = _open_page(monkeypatch, tmp_path / "empty")
    assert at.title[0].value == "Evaluate"
    assert len(at.info) == 1 and "Train" in at.info[0].value and not at.tabs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_page_in_a_real_browser(run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    store, _ = run
    port = _free_port()
    env = {**os.environ, "TL_RUNS_DIR": str(store.root), "TL_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(APP),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("streamlit did not become healthy in 60 s")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/evaluate", wait_until="domcontentloaded")  # a deep link
            page.get_by_text("Validation accuracy").wait_for(timeout=90_000)
            page.get_by_text("rows = true class, columns = predicted").wait_for(timeout=60_000)
            assert page.locator("[data-testid='stException']").count() == 0
            page.get_by_role("tab", name="Mistakes").click()
            page.locator("[data-testid='stImage']").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "evaluate.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)

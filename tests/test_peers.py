"""Label review (exclude/relabel/undo, label-issue ranking), the data-efficiency curve, TTA and the
augmentation preview: the core functions and their CLI commands."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, make_shapes_dataset

from tests.files import plant_label_errors
from tl_dashboard import curation
from tl_dashboard.data import scan_images
from tl_dashboard.engine import TrainConfig


@pytest.fixture(autouse=True)
def offline_and_tmp_caches(tmp_path, monkeypatch):
    """No hub probe; every cache (decoded images, features) under tmp."""
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes", per_class=6, classes=("circles", "squares", "bars"))


# ----------------------------------------------------------------------------- exclude / relabel
def test_exclusions_are_skipped_by_the_scanner_and_can_be_taken_back(shapes):
    before = scan_images(shapes)
    victim = before.train[0].path
    assert curation.exclude(shapes, [victim], reason="blurry") == [victim.relative_to(shapes).as_posix()]
    after = scan_images(shapes)
    used = {s.path for s in after.train + after.val}
    assert victim.exists() and victim not in used  # never deleted, no longer used
    assert any(s.path == victim and "excluded" in s.reason for s in after.skipped)
    assert not any(s.path.name.startswith(".tl-") for s in after.skipped)  # our own files are not "skipped images"
    assert len(used) == len(before.train) + len(before.val) - 1
    curation.include(shapes, [victim.relative_to(shapes)])
    again = scan_images(shapes)
    assert victim in {s.path for s in again.train + again.val}


def test_relabel_moves_the_file_logs_it_and_undo_moves_it_back(shapes):
    src = shapes / "circles" / "circles_00.png"
    (shapes / "squares" / "circles_00.png").write_bytes(src.read_bytes())  # a name clash in the target class
    move = curation.relabel(shapes, src, "squares")
    dest = shapes / move["to"]
    assert not src.exists() and dest.exists() and dest.name == "circles_00-1.png"
    split = scan_images(shapes)
    label = {s.path: split.classes[s.label] for s in split.train + split.val}
    assert label[dest] == "squares"
    assert curation.relabel_log(shapes)[-1]["id"] == move["id"]
    curation.undo_relabel(shapes, move["id"])
    assert src.exists() and not dest.exists()
    assert curation.relabel_log(shapes)[-1]["undone"] is True
    with pytest.raises(curation.CurationError, match="No relabel"):
        curation.undo_relabel(shapes, move["id"])  # once only


def test_relabel_and_exclude_refuse_paths_outside_and_unknown_classes(shapes, tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    with pytest.raises(curation.CurationError, match="not inside"):
        curation.exclude(shapes, [outside])
    with pytest.raises(curation.CurationError, match="not inside"):
        curation.relabel(shapes, "../elsewhere.png", "squares")
    for bad in ("nope", "../x", ".hidden", ""):
        with pytest.raises(curation.CurationError):
            curation.relabel(shapes, "circles/circles_01.png", bad)
    assert (shapes / "circles" / "circles_01.png").exists()


def test_relabel_stays_inside_its_split_in_a_presplit_folder(tmp_path):
    root = tmp_path / "pre"
    make_shapes_dataset(root / "train", per_class=3)
    make_shapes_dataset(root / "val", per_class=2)
    move = curation.relabel(root, "val/circles/circles_00.png", "squares")
    assert move["to"] == "val/squares/circles_00.png"


# ----------------------------------------------------------------------------- label issues


@pytest.mark.slow
def test_planted_label_errors_rank_among_the_top_suspects(tmp_path, capsys):
    from tl_dashboard.cli import main

    root = tmp_path / "emoji3"
    shutil.copytree(SAMPLE, root)
    planted = plant_label_errors(root, per_class=2)  # 6 wrong labels among 180 images
    assert main(["label-issues", str(root), "--image-size", "96", "--top", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 180 and len(out["suspects"]) == 12
    scores = [r["score"] for r in out["suspects"]]
    assert scores == sorted(scores)  # most suspicious first
    top6 = {r["path"] for r in out["suspects"][:6]}
    top12 = {r["path"] for r in out["suspects"]}
    recall6, recall12 = len(top6 & planted) / 6, len(top12 & planted) / 6
    print(f"recall@6 {recall6:.2f}  recall@12 {recall12:.2f}")
    assert recall12 >= 0.5, (recall6, recall12, out["suspects"])
    r = out["suspects"][0]
    assert {"path", "split", "given", "predicted", "confidence", "given_prob", "score", "flagged"} <= set(r)
    assert Path(r["path"]).is_file()


def test_out_of_sample_probs_never_see_the_row_they_predict():
    from tl_dashboard.label_issues import out_of_sample_probs

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (20, 4)), rng.normal(2, 1, (20, 4))])
    y = np.repeat([0, 1], 20)
    y[0] = 1  # a planted error deep inside class 0's cloud
    probs, k = out_of_sample_probs(x, y, 2, folds=5)
    assert k == 5 and probs.shape == (40, 2)
    assert probs[0, 1] < 0.5  # a model that had seen row 0 with label 1 would be pulled towards it


# ----------------------------------------------------------------------------- data-efficiency curve
def test_head_curve_rises_with_images_per_class_and_reports_the_spread(tmp_path, capsys):
    from tl_dashboard.cli import main

    data = make_shapes_dataset(tmp_path / "s3", per_class=15, classes=("circles", "squares", "bars"))
    assert main(["data-curve", str(data), "--image-size", "64", "--draws", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pts = out["points"]
    assert [p["n_per_class"] for p in pts] == [1, 2, 5, 10, 12]  # ladder, then all (12 train per class)
    assert all(len(p["accuracies"]) == 3 for p in pts[:-1]) and len(pts[-1]["accuracies"]) == 1
    assert all(p["min"] <= p["mean"] <= p["max"] for p in pts)
    assert pts[-1]["mean"] >= pts[0]["mean"]
    assert out["seconds"]["features"] > 0 and out["val_images"] == 9


def test_curve_sizes_stop_at_the_smallest_class():
    from tl_dashboard.data_curve import curve_sizes

    assert curve_sizes([30, 7]) == [1, 2, 5, 7]
    assert curve_sizes([100, 100], sizes=[3, 50, 500]) == [3, 50, 100]


@pytest.mark.slow
def test_trained_plan_point_trains_on_a_subset_copy(shapes):
    from tl_dashboard.data_curve import data_curve

    cfg = TrainConfig(str(shapes), epochs=1, image_size=32, batch_size=8, device="cpu")
    curve = data_curve(cfg, sizes=[1], plans=["scratch"], trained_draws=1)
    assert [p["n_per_class"] for p in curve.points] == [1, 5]
    assert all(p["plan"] == "scratch" and 0 <= p["mean"] <= 1 for p in curve.points)
    assert sorted(p.name for p in shapes.iterdir()) == ["bars", "circles", "squares"]  # data untouched


# ----------------------------------------------------------------------------- augmentation preview
def test_augmentation_preview_returns_uint8_views_as_training_sees_them(shapes):
    from tl_dashboard.augment_preview import augmentation_preview, input_sizes
    from tl_dashboard.engine import prepare

    cfg = TrainConfig(str(shapes), image_size=48, augment=True)
    rows = augmentation_preview(cfg, images=3, views=2, seed=1)
    assert len(rows) == 3 and len({r["label"] for r in rows}) == 3  # spread over the classes
    for r in rows:
        assert r["original"].dtype == np.uint8 and r["original"].shape == (48, 48, 3)
        assert len(r["views"]) == 2 and all(v.shape == (48, 48, 3) and v.dtype == np.uint8 for v in r["views"])
    again = augmentation_preview(cfg, images=3, views=2, seed=1)
    assert all(np.array_equal(a["views"][0], b["views"][0]) for a, b in zip(rows, again))  # same seed, same preview
    plain = augmentation_preview(TrainConfig(str(shapes), image_size=48), images=1, views=4)
    assert len(plain[0]["views"]) == 1 and np.array_equal(plain[0]["views"][0], plain[0]["original"])
    prep = prepare(TrainConfig(str(shapes), image_size=48))
    assert input_sizes(cfg)[:2] == (prep.image_size, prep.load_size)


# ----------------------------------------------------------------------------- TTA
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tl_dashboard.runs import RunStore
    from tl_dashboard.worker import run_training

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_OFFLINE", "1")
        data = make_shapes_dataset(tmp_path_factory.mktemp("tta_data"), per_class=5)
        store = RunStore(tmp_path_factory.mktemp("tta_runs"))
        run_id = store.create_run(TrainConfig(str(data), epochs=1, image_size=48, batch_size=8).to_dict())
        store.mark_running(run_id, os.getpid(), socket.gethostname())
        assert run_training(store, run_id).status == "finished"
        yield store, run_id, data


def test_tta_views_are_ten_crops_and_flips():
    import torch

    from tl_dashboard.tta import TTA_VIEWS, tta_views

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    views = tta_views(x, 4)
    assert len(views) == len(TTA_VIEWS) == 10
    assert torch.equal(views[0], x[..., 1:5, 1:5]) and torch.equal(views[4], x[..., 2:, 2:])
    assert torch.equal(views[5], views[0].flip(-1))


def test_tta_evaluation_and_prediction_show_both_with_and_without(tiny_run, capsys):
    from tl_dashboard import evaluate as ev
    from tl_dashboard.cli import main
    from tl_dashboard.tta import evaluate_tta, predict_tta

    store, run_id, data = tiny_run
    res = evaluate_tta(store, run_id)
    plain = ev.evaluate_run(store, run_id)
    assert res["accuracy"] == pytest.approx(plain.accuracy)  # view 0 is the plain prediction
    assert 0 <= res["accuracy_tta"] <= 1 and res["views"] == 10 and res["images"] == len(plain.paths)
    img = sorted((data / "circles").iterdir())[0]
    [p] = predict_tta(store, [str(img)], top_k=2, run_id=run_id)
    [q] = ev.predict_images(store, [str(img)], 2, run_id=run_id, cam=False)
    assert [c for c, _ in p["top_k_plain"]] == [c for c, _ in q.top]
    assert p["top_k_plain"][0][1] == pytest.approx(q.top[0][1], abs=1e-5)
    assert main(["predict", run_id, str(img), "--tta", "--top-k", "2", "--json", "--runs-dir", str(store.root)]) == 0
    [row] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["top_k"]) == 2 and len(row["top_k_plain"]) == 2


# ----------------------------------------------------------------------------- pages (AppTest)
@pytest.fixture
def page_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.delenv("TL_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    return tmp_path


def _open(page: str, data_dir: Path, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.run()
    at.session_state["data_dir"] = str(data_dir)
    for k, v in state.items():
        at.session_state[k] = v
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_label_issues_page_relabels_excludes_and_undoes(page_env, shapes):
    at = _open("labels", shapes, image_size=32)
    at.button(key="li_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "18 images ranked" in "\n".join(c.value for c in at.caption)
    first = at.session_state["li_report"]["suspects"][0]["path"]
    at.button(key="li_relabel_0").click().run()
    assert not Path(first).exists() and len(curation.relabel_log(shapes)) == 1
    second = at.session_state["li_report"]["suspects"][1]["path"]
    at.button(key="li_exclude_1").click().run()
    assert Path(second).relative_to(shapes).as_posix() in curation.excluded_paths(shapes)
    move_id = curation.relabel_log(shapes)[0]["id"]
    at.button(key=f"li_undo_{move_id}").click().run()
    assert Path(first).exists() and not at.exception


def test_train_page_previews_the_augmentation(page_env, shapes):
    at = _open("train", shapes, image_size=32, augment=True)
    at.toggle(key="aug_preview_on").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [e for e in at.main if type(e).__name__ == "Image"]
    assert len(shown) == 4 * 5  # 4 images x (centre crop + 4 augmented views)


def test_label_page_draws_the_data_curve_with_its_spread(page_env, shapes):
    at = _open("labels", shapes, image_size=32)
    at.slider(key="curve_draws").set_value(2).run()
    at.button(key="curve_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    import json as _json

    fig = _json.loads(at.get("plotly_chart")[0].proto.spec)
    bands = [t for t in fig["data"] if t.get("fill") == "toself"]
    lines = [t for t in fig["data"] if t.get("mode") == "lines+markers"]
    assert len(bands) == 1 and len(lines) == 1 and lines[0]["x"] == [1, 2, 5]  # 5 train images per class

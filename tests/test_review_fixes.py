"""Review findings 1, 2, 3, 7, 10: a run stopped before its first epoch is not a trained model, the
queue never promises "about 0 s", and "auto" settings read as what they resolved to, not 0."""

from __future__ import annotations

import time

import pytest

from tl_dashboard import compare, engine, fairqueue
from tl_dashboard.auto_head import resolve
from tl_dashboard.engine import Callback, TrainConfig, train
from tl_dashboard.formatting import config_view, format_config_value
from tl_dashboard.inference import list_evaluable_runs
from tl_dashboard.resume import ResumeError, can_resume, resume_run, why_not_resumable
from tl_dashboard.runs import RunStore
from views import present


class _StopAtStep2(Callback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, step):
        self.steps += 1

    def should_stop(self):
        return self.steps >= 2


def test_stop_before_first_epoch_keeps_no_model_and_runs_no_validation(shapes_dir, tmp_path, monkeypatch):
    calls = []
    real = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda loop: calls.append(1) or real(loop))
    cfg = TrainConfig(data_dir=str(shapes_dir), epochs=3, batch_size=4, image_size=32, lr=3e-3, freeze="none")
    r = train(cfg, [_StopAtStep2()], out_dir=tmp_path)
    assert r.status == "stopped" and r.epochs == 0
    assert r.best_val_accuracy is None and r.val_accuracy is None and r.best_epoch is None
    assert r.last_val_accuracy is None
    assert calls == []  # no whole validation pass after the stop (finding 7)
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "resume.pt").exists()
    assert r.auto["lr_used"] == pytest.approx(3e-3) and r.auto["epochs_planned"] == 3


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.delenv("TL_MAX_RUNNING", raising=False)
    monkeypatch.setattr(fairqueue, "default_max_running", lambda: 1)
    return RunStore(tmp_path / "runs")


def _stopped_run(store: RunStore, summary: dict, checkpoint: bool) -> str:
    rid = store.create_run({"model": "resnet18", "freeze": "none", "epochs": 3, "lr": 0}, label="early")
    store.claim_next(1, "h")
    store.finish_run(rid, "stopped", summary=summary)
    if checkpoint:  # older stores wrote the mid-epoch model as a checkpoint
        (store.run_dir(rid) / "model.safetensors").write_bytes(b"x")
    return rid


def test_a_zero_epoch_run_reads_no_completed_epoch_everywhere(store):
    old = _stopped_run(store, {"epochs": 0, "best_epoch": 0, "best_val_accuracy": 0.472, "val_images": 36}, True)
    new = _stopped_run(store, {"epochs": 0, "best_epoch": None, "best_val_accuracy": None, "val_images": 36}, False)
    for rid in (old, new):
        run = store.get_run(rid)
        title = present.run_title(run, accuracy=True)
        assert "no completed epoch" in title and "%" not in title
        row = present.run_rows([run])[0]
        assert row["best val acc"] is None and row["95% interval"] == "no completed epoch"
        by = {r["field"]: r for r in compare.compare_table([run])}
        assert by["best val accuracy"][next(k for k in by["best val accuracy"] if k not in ("field", "differs"))] == "no completed epoch"
        assert "before its first epoch completed" in present.status_message(run)[1]
        # Resume: honest refusal, with the reason on the Runs page
        assert not can_resume(store, rid)
        assert "no epoch completed" in why_not_resumable(store, rid)
        with pytest.raises(ResumeError, match="no epoch completed"):
            resume_run(store, rid, start=False)
    assert list_evaluable_runs(store) == []  # even the old run with its mid-epoch checkpoint
    with pytest.raises(compare.CompareError, match="no completed epoch"):
        compare.weight_drift(store, old)


def _running(store: RunStore, progress: dict, steps: list[dict] | None = None) -> str:
    rid = store.create_run({}, label="ahead")
    store.claim_next(1, "h")
    store.heartbeat(rid, progress)
    if steps:
        store.add_steps(rid, steps)
    return rid


def test_queue_wait_without_a_finished_run_is_the_running_runs_own_eta_or_unknown(store):
    now = time.time()
    # the running run logged steps 1..10 one second apart, 100 steps in all: about 90 s left
    _running(
        store,
        {"step": 10, "total_steps": 100, "elapsed": 60.0},
        [{"step": i, "epoch": i / 50, "loss": 1.0, "lr": 1e-3, "time": now - 10 + i} for i in range(1, 11)],
    )
    store.create_run({}, label="B")
    store.create_run({}, label="C")
    waits = [q["wait_s"] for q in fairqueue.queue_view(store)]
    assert waits[0] == pytest.approx(90, abs=1) and waits[1] is None  # no finished run: C's wait is unknown


def test_queue_wait_is_none_not_zero_before_the_running_run_has_steps(store):
    _running(store, {"step": 0, "total_steps": 100})
    store.create_run({}, label="B")
    assert [q["wait_s"] for q in fairqueue.queue_view(store)] == [None]


def test_queued_text_when_another_run_is_training():
    run = {"status": "queued", "progress": {}, "config": {}}
    assert present.progress_info(run, [], running_now=1)["text"] == "Queued: waiting for the run ahead to finish"
    assert present.progress_info(run, [])["text"] == "Queued: waiting for the training process to start"


def test_auto_values_are_shown_as_what_they_resolved_to():
    summary = {"auto": {"solver": False, "lr_used": 0.001, "epochs_planned": 10}, "image_size": 224}
    cfg = {"lr": 0, "epochs": 0, "image_size": 0, "patience": 0, "unfreeze_at": 0, "train_per_class": 0, "seed": 0}
    assert config_view(cfg, summary) == {
        "lr": "0.001 (auto)",
        "epochs": "10 (auto)",
        "image_size": "224 (auto)",
        "patience": "off",
        "unfreeze_at": "off",
        "train_per_class": "all",
        "seed": 0,
    }
    assert config_view({"lr": 0, "epochs": 0})["lr"] == "auto"  # nothing recorded (queued, older run)
    assert format_config_value("lr", 0, {"auto": {"solver": True}}) == "auto (L-BFGS solver)"
    assert format_config_value("lr", 3e-3, summary) == 3e-3  # pinned values stay as they are
    run = {"id": "r-a", "config": {"lr": 0, "epochs": 0}, "summary": {**summary, "epochs": 10}}
    by = {r["field"]: r for r in compare.compare_table([run])}
    assert by["learning rate"]["r-a"] == "0.001 (auto)" and by["epochs"]["r-a"] == "10"


def test_auto_note_names_the_pinned_setting(shapes_dir):
    prep = engine.prepare(TrainConfig(data_dir=str(shapes_dir), epochs=1, lr=0, image_size=32))
    _, auto = resolve(prep.config, prep.plan, prep.blocks)
    assert not auto["solver"] and "epochs is pinned to 1" in auto["note"] and "pinned setting" not in auto["note"]

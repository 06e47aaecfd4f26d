"""The best epoch restored, early stopping, honest time, and resume after SIGKILL (issues 12, 15)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tl_dashboard import engine
from tl_dashboard.engine import Callback, TrainConfig, load_checkpoint, train


def _cfg(data, **kw):
    base = dict(data_dir=str(data), epochs=3, batch_size=8, image_size=32, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _val_accuracy(run_dir, data, cfg):
    """Accuracy of the saved checkpoint on the run's validation split, computed from scratch."""
    from tl_dashboard.data import DecodedImageCache, scan_images
    from tl_dashboard.engine import Normalizer, center_crop

    model, _classes, meta = load_checkpoint(run_dir)
    split = scan_images(str(data), val_fraction=cfg.val_fraction, seed=cfg.seed)
    x, y = DecodedImageCache(meta["load_size"], interpolation=meta["interpolation"]).stack(split.val)
    with torch.no_grad():
        logits = model(Normalizer(meta["mean"], meta["std"])(center_crop(x, meta["image_size"])))
    return (logits.argmax(1) == y).float().mean().item()


def test_the_checkpoint_is_the_best_epoch_and_scores_the_reported_accuracy(shapes_dir, tmp_path, monkeypatch):
    real = engine.evaluate
    calls = []

    def worse_later(loop):  # epoch 2 is the best; later epochs report a worse validation loss and accuracy
        loss, acc = real(loop)
        calls.append(acc)
        return (loss, acc) if len(calls) == 2 else (loss + 1.0, acc * 0.5)

    monkeypatch.setattr(engine, "evaluate", worse_later)
    cfg = _cfg(shapes_dir, freeze="none", epochs=4)
    r = train(cfg, out_dir=tmp_path)
    assert r.best_epoch == 2 and r.val_accuracy == r.best_val_accuracy == calls[1]
    assert r.last_val_accuracy == r.history[-1]["val_acc"] == calls[3] * 0.5
    _, _, meta = load_checkpoint(tmp_path)
    assert meta["epoch"] == 2
    assert _val_accuracy(tmp_path, shapes_dir, cfg) == pytest.approx(r.val_accuracy)


def test_early_stopping_on_validation_loss(shapes_dir, monkeypatch):
    losses = iter([0.5, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    monkeypatch.setattr(engine, "evaluate", lambda loop: (next(losses), 0.5))
    logs = []

    class Log(Callback):
        def on_log(self, level, message):
            logs.append(message)

    r = train(_cfg(shapes_dir, epochs=7, patience=2), [Log()])
    assert r.status == "finished" and r.early_stopped and r.epochs == 4 and r.best_epoch == 2  # same accuracy: the lower loss
    assert any("Early stop after epoch 4" in m for m in logs)
    off = train(_cfg(shapes_dir, epochs=2, patience=0))
    assert not off.early_stopped and off.epochs == 2


def test_a_stopped_run_reports_the_best_of_its_completed_epochs(shapes_dir, tmp_path):
    seen = []

    class StopInEpoch3(Callback):
        def on_epoch_start(self, epoch):
            seen.append(epoch)

        def should_stop(self):
            return len(seen) >= 3

    r = train(_cfg(shapes_dir, epochs=5, freeze="none"), [StopInEpoch3()], out_dir=tmp_path)
    assert r.status == "stopped" and r.epochs == 2
    assert r.val_accuracy == r.best_val_accuracy == max(h["val_acc"] for h in r.history) > 0.0
    assert load_checkpoint(tmp_path)[2]["epoch"] == r.best_epoch


def test_honest_time_and_cost_are_recorded(shapes_dir):
    head = train(_cfg(shapes_dir, epochs=1))
    full = train(_cfg(shapes_dir, epochs=1, freeze="none"))
    for r in (head, full):
        assert r.wall_seconds > 0 and r.cpu_seconds > 0 and isinstance(r.shared_machine, bool)
        assert set(r.load_avg) == {"start", "end", "cores"}
        assert r.gflops_per_epoch and r.gflops_per_epoch > 0
    assert full.gflops_per_epoch > 50 * head.gflops_per_epoch  # backbone forward+backward vs a linear head


def _store_run(store, cfg):
    run_id = store.create_run(cfg.to_dict(), status="queued")
    return run_id


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_with_all_epochs_and_the_same_numbers(shapes_dir, tmp_path):
    from tl_dashboard.resume import ResumeError, resume_run
    from tl_dashboard.runs import RunStore
    from tl_dashboard.worker import run_training, worker_loop

    cfg = _cfg(shapes_dir, freeze="4", epochs=6, batch_size=4, lr=1e-2)
    killed = RunStore(tmp_path / "killed")
    run_id = _store_run(killed, cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import torch; torch.set_num_threads(1); from tl_dashboard.worker import main; main(['--runs-dir', {str(killed.root)!r}])",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while len(killed.epochs(run_id)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.mark_dead_runs() == [run_id]
    done_before = len(killed.epochs(run_id))
    assert 2 <= done_before < 6, "the kill must land mid-run"
    resume_run(killed, run_id, start=False)
    assert killed.get_run(run_id)["status"] == "queued"
    worker_loop(killed)  # the same id, back from the queue
    run = killed.get_run(run_id)
    assert run["status"] == "finished" and run["summary"]["epochs"] == 6
    assert [e["epoch"] for e in killed.epochs(run_id)] == [1, 2, 3, 4, 5, 6]
    steps = [s["step"] for s in killed.steps(run_id)]
    assert steps == sorted(set(steps))  # the curve continues: no repeated step
    assert 1 <= run["summary"]["resumed_from_epoch"] <= done_before  # an epoch cut short is trained again
    with pytest.raises(ResumeError, match="finished"):
        resume_run(killed, run_id)

    whole = RunStore(tmp_path / "whole")
    other = _store_run(whole, cfg)
    whole.mark_running(other, os.getpid(), "h")
    run_training(whole, other)
    a, b = killed.epochs(run_id), whole.epochs(other)
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("train_loss", "val_loss", "val_acc")]
    print(f"resume vs uninterrupted: max |diff| {max(diffs):.3g} over {len(diffs)} metrics")
    assert max(diffs) <= 1e-5
    assert run["summary"]["val_accuracy"] == whole.get_run(other)["summary"]["val_accuracy"]


def test_resume_refuses_runs_without_a_resume_point(tmp_path):
    from tl_dashboard.resume import ResumeError, resume_run
    from tl_dashboard.runs import RunStore

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(TrainConfig(data_dir="x").to_dict(), status="queued")
    with pytest.raises(ResumeError, match="queued"):
        resume_run(store, run_id)
    store.finish_run(run_id, "interrupted", error="killed")
    with pytest.raises(ResumeError, match="no resume point"):
        resume_run(store, run_id)


def test_runs_page_resume_button_queues_the_run_again(tmp_path, monkeypatch):
    from pathlib import Path

    from tests.test_pages import open_page
    from tl_dashboard import worker, workspaces
    from tl_dashboard.runs import RunStore

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.chdir(repo)
    started = []
    monkeypatch.setattr(worker, "start_worker", lambda store: started.append(store.root))
    store = RunStore()
    ws = workspaces.create_workspace(store)
    run_id = store.create_run({"model": "resnet18", "epochs": 3}, label="cut short", workspace=ws)
    store.finish_run(run_id, "interrupted", error="the training process died")
    store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "step": 2}, store.run_dir(run_id) / "resume.pt")
    at = open_page("runs", ws=ws)
    at.button(key="runs_resume").click().run()
    assert store.get_run(run_id)["status"] == "queued" and started

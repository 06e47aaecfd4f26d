"""Config declared once, limits before start, errors caught by name (issue 16 / 12)."""

import dataclasses
import shutil

import pytest

from tl_dashboard import cli
from tl_dashboard.config import ConfigError, TrainConfig
from tl_dashboard.configcheck import allowed_image_sizes, check_config
from tl_dashboard.errors import UserError


def test_every_config_field_is_a_cli_option_and_coerced_from_strings():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "data", "--epochs", "3", "--no-augment", "--label-smoothing", "0.1"])
    cfg = cli.config_from_args(args, args.freeze)
    assert cfg.epochs == 3 and cfg.label_smoothing == 0.1 and cfg.freeze == "head"
    dests = {a.dest for a in parser._subparsers._group_actions[0].choices["train"]._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= dests
    c = TrainConfig.from_dict({"data_dir": "x", "epochs": 4.0, "lr": "0.01", "augment": "true", "nope": 1})
    assert (c.epochs, c.lr, c.augment) == (4, 0.01, True) and isinstance(c.epochs, int)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(model="vit_tiny_patch16_224", image_size=1000), "takes 224"),
        (dict(epochs=-1), "--epochs -1"),
        (dict(batch_size=0), "--batch-size 0"),
        (dict(lr=-1.0), "--lr"),
        (dict(unfreeze_at=1), "--unfreeze-at 1"),
        (dict(image_size=8), "32..1024"),
    ],
)
def test_impossible_settings_are_refused_with_one_line(kw, needle):
    with pytest.raises(ConfigError, match=needle.replace("..", r"\.\.")) as e:
        check_config(TrainConfig(data_dir="x", **kw), check_freeze=False)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)


def test_batch_larger_than_training_set_refused_before_a_run_is_recorded(shapes_dir, tmp_path, capsys):
    assert allowed_image_sizes("vit_tiny_patch16_224") == (224, 224)
    code = cli.main(["train", str(shapes_dir), "--batch-size", "500", "--image-size", "32", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--batch-size 500 is larger than the" in err[0]
    from tl_dashboard.runs import RunStore

    assert RunStore(tmp_path / "r").list_runs() == []


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    def boom(args):
        raise ValueError("inside torch")

    monkeypatch.setattr(cli, "COMMANDS", [cli.Command("layers", "x", cli.args_layers, boom)])
    with pytest.raises(ValueError, match="inside torch"):  # not shown as a user mistake
        cli.main(["layers"])


@pytest.mark.parametrize(
    "exc, traceback_logged", [(ConfigError("--lr 0: use a positive rate."), False), (ValueError("shape mismatch inside torch"), True)]
)
def test_worker_shows_user_errors_as_one_line_and_keeps_tracebacks_of_others(tmp_path, monkeypatch, exc, traceback_logged):
    from tl_dashboard import worker
    from tl_dashboard.runs import RunStore

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(worker, "train", fail)
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(TrainConfig(data_dir="x").to_dict(), status="queued")
    store.mark_running(run_id, 1, "h")
    worker.run_training(store, run_id)
    run = store.get_run(run_id)
    assert run["status"] == "failed" and "\n" not in run["error"]
    assert any("Traceback" in m["message"] for m in store.logs(run_id)) == traceback_logged
    assert run["error"].startswith("ValueError: ") == traceback_logged


def test_weight_drift_needs_only_the_model_not_the_data_folder(shapes_dir, tmp_path):
    from tl_dashboard.compare import weight_drift
    from tl_dashboard.runs import RunStore
    from tl_dashboard.worker import run_training

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    store = RunStore(tmp_path / "runs")
    cfg = TrainConfig(data_dir=str(data), epochs=1, batch_size=8, image_size=32, freeze="4")
    run_id = store.create_run(cfg.to_dict(), status="queued")
    store.mark_running(run_id, 1, "h")
    run_training(store, run_id)
    shutil.rmtree(data)  # the drift no longer scans (or needs) the data folder
    rows = weight_drift(store, run_id)
    assert [r["drift"] for r in rows[:4]] == [0.0] * 4 and rows[-1]["drift"] > 0

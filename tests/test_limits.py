"""The host's upload limits and free space are checked before an upload writes a byte."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from tl_dashboard.cli import main
from tl_dashboard.importer import import_zip, save_images
from tl_dashboard.limits import UploadTooLarge, run_bytes_needed
from tl_dashboard.storage import DiskFull


def _png(colour=(200, 30, 30), size=64) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _zip(n_per_class: int = 3, size: int = 64) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for cls in ("cats", "dogs"):
            for i in range(n_per_class):
                zf.writestr(f"pets/{cls}/{i}.png", _png(size=size))
    return buf.getvalue()


def test_per_upload_limit(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_MAX_UPLOAD_MB", "0.01")
    data = _zip()
    with pytest.raises(UploadTooLarge) as err:
        import_zip(data, tmp_path / "new")
    assert "TL_MAX_UPLOAD_MB" in str(err.value) and "per upload" in str(err.value)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    with pytest.raises(UploadTooLarge):
        save_images([("a.png", _png()), ("b.png", _png())], tmp_path / "cls")
    assert not (tmp_path / "cls").exists()


def test_total_datasets_limit(runs_dir, tmp_path, monkeypatch):
    datasets = tmp_path / "datasets"
    (datasets / "old").mkdir(parents=True)
    (datasets / "old" / "big.bin").write_bytes(b"\0" * 200_000)
    monkeypatch.setenv("TL_MAX_DATASETS_GB", "0.0002")  # 200 kB, already taken
    with pytest.raises(UploadTooLarge) as err:
        save_images([("a.png", _png())], datasets / "mine" / "cls")
    assert "TL_MAX_DATASETS_GB" in str(err.value) and str(datasets) in str(err.value)
    monkeypatch.setenv("TL_MAX_DATASETS_GB", "1")
    assert len(save_images([("a.png", _png())], datasets / "mine" / "cls").written) == 1


def test_cli_import_over_the_limit_is_one_line(runs_dir, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(_zip())
    monkeypatch.setenv("TL_MAX_UPLOAD_MB", "0.01")
    assert main(["import", str(archive), "--into", str(tmp_path / "into")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the zip") and "TL_MAX_UPLOAD_MB" in err[0]


def test_import_checks_free_space_before_writing(tmp_path, monkeypatch, runs_dir):
    from test_storage import mount_small_fs

    mnt = tmp_path / "small"
    why = mount_small_fs(mnt, 1)
    if why:
        pytest.skip(why)
    import subprocess

    try:
        with pytest.raises(DiskFull) as err:
            import_zip(_zip(n_per_class=6, size=200), mnt / "pets")
        assert "needs" in str(err.value) and str(mnt) in str(err.value)
        assert list(mnt.iterdir()) == []  # not a byte written
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_run_estimate_counts_the_checkpoint_and_its_replacement():
    assert run_bytes_needed(1_000_000) >= 2 * 4_000_000


def test_data_page_upload_over_the_limit_is_a_message(runs_dir, tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.setenv("TL_MAX_UPLOAD_MB", "0.01")
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/data.py")
    at.run()
    at.button_group(key="w_data_source").set_value("upload").run()
    at.file_uploader(key="zip_0").set_value(("pets.zip", _zip(), "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(str(e.value) for e in at.error)
    assert "TL_MAX_UPLOAD_MB" in errors and "per upload" in errors

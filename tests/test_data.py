"""Tests for tl_dashboard.data: scanning, validation, splitting, decoding and caching."""

from __future__ import annotations

import collections
import io
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, JpegImagePlugin

from tests.files import png_bytes
from tl_dashboard import data
from tl_dashboard.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    MIN_IMAGE_SIDE,
    DataError,
    DatasetSplit,
    DecodedImageCache,
    Sample,
    Skipped,
    check_image,
    env_number,
    load_rgb,
    resize_center_square,
    scan_images,
)

# ----------------------------------------------------------------------------- helpers
TINY_PNG = png_bytes()


def _put(path: Path, payload: bytes = TINY_PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _noise_jpeg(path: Path, size=(64, 64), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height but holds no pixel data: cheap 'bomb'."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _put(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _put(root / name / f"{i:03d}.png")
    return root


def _rel(split: DatasetSplit, samples) -> list[str]:
    return [s.path.relative_to(split.root).as_posix() for s in samples]


# ----------------------------------------------------------------------------- the laced folder
BAD = {  # relative path -> expected start of the skip reason
    "readme.md": "not inside a class folder",
    ".DS_Store": "hidden file",
    ".ipynb_checkpoints": "hidden folder",
    "bad/empty.jpg": "empty file (0 bytes)",
    "bad/truncated.jpg": "unreadable or truncated image",
    "bad/truncated_big.jpg": "unreadable or truncated image",
    "bad/truncated.png": "unreadable or truncated image",
    "bad/fake.png": "unreadable or truncated image",
    "bad/tiny.png": f"too small (1x1; need at least {MIN_IMAGE_SIDE} px a side)",
    "bad/notes.txt": "not an image (extension .txt)",
    "bad/LICENSE": "not an image (no extension)",
    "bad/.hidden.jpg": "hidden file",
    "bad/bomb.png": "too large",
    "bad/huge_header.png": "too large: 9000x9000 pixels exceeds the limit of 64000000",
    "bad/link_out.jpg": "symlink leaves the data folder",
    "bad/dir_out": "symlink leaves the data folder",
}
GOOD = [
    "good/cmyk.jpg",
    "good/gray16.png",
    "good/rgba.png",
    "good/palette.gif",
    "good/anim.gif",
    "good/exif6.jpg",
    "good/big.jpg",
    "good/café_ñ_猫.jpg",
    "good/gray.bmp",
    "good/float.tif",
    "good/pic.webp",
    "good/UPPER.JPEG",
    "good/nested/deeper/bw.png",
    "bad/ok1.png",
    "bad/ok2.jpg",
    "bad/link_in.png",
]


@pytest.fixture(scope="module")
def laced(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("laced")
    outside = tmp_path_factory.mktemp("outside")
    g, b = root / "good", root / "bad"
    g.mkdir(), b.mkdir()
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(g / "cmyk.jpg")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).save(g / "gray16.png")
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(g / "rgba.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(g / "palette.gif", transparency=0)
    frames = [Image.new("P", (24, 24), i) for i in range(3)]
    frames[0].save(g / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.new("RGB", (40, 24), "green").save(g / "exif6.jpg", exif=exif)
    y, x = np.mgrid[0:3000, 0:3000]
    photo = np.stack([x * 255 // 3000, y * 255 // 3000, (x ^ y) & 255], -1).astype(np.uint8)
    Image.fromarray(photo).save(g / "big.jpg", quality=80)
    _noise_jpeg(g / "café_ñ_猫.jpg", (20, 30))
    Image.new("L", (20, 20), 99).save(g / "gray.bmp")
    Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)).save(g / "float.tif")
    Image.new("RGB", (20, 20), "blue").save(g / "pic.webp")
    _noise_jpeg(g / "UPPER.JPEG", (20, 20))
    Image.new("1", (20, 20), 1).save(_put(g / "nested/deeper/bw.png"))

    _put(root / "readme.md", b"# data")
    _put(root / ".DS_Store", b"\0\0")
    _put(root / ".ipynb_checkpoints/a.png")
    _put(b / "empty.jpg", b"")
    _truncate(_noise_jpeg(b / "truncated.jpg"))
    _truncate(_noise_jpeg(b / "truncated_big.jpg", (1200, 900)))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(b / "truncated.png")
    _truncate(b / "truncated.png")
    _put(b / "fake.png", b"this is text, not a PNG\n")
    Image.new("RGB", (1, 1)).save(b / "tiny.png")
    _put(b / "notes.txt", b"notes")
    _put(b / "LICENSE", b"MIT")
    _put(b / ".hidden.jpg", TINY_PNG)
    _header_only_png(b / "bomb.png", 20000, 20000)  # beyond Pillow's own guard
    _header_only_png(b / "huge_header.png", 9000, 9000)  # beyond our 64 MP default only
    _put(b / "ok1.png")
    _noise_jpeg(b / "ok2.jpg", (16, 16))
    os.symlink(_put(outside / "x.png"), b / "link_out.jpg")
    os.symlink(outside, b / "dir_out")
    os.symlink(b / "ok1.png", b / "link_in.png")
    return root


@pytest.fixture(scope="module")
def laced_split(laced) -> DatasetSplit:
    return scan_images(laced)


def test_laced_folder_bad_files_skipped_with_reasons(laced, laced_split):
    reasons = {s.path.relative_to(laced).as_posix(): s.reason for s in laced_split.skipped}
    for rel, expected in BAD.items():
        assert rel in reasons, f"{rel} not skipped"
        assert reasons[rel].startswith(expected), (rel, reasons[rel])
    assert set(reasons) == set(BAD)
    assert "TL_MAX_IMAGE_PIXELS" in reasons["bad/huge_header.png"]
    assert all(isinstance(s, Skipped) and s.to_dict() == {"path": str(s.path), "reason": s.reason} for s in laced_split.skipped)


def test_laced_folder_good_files_used_and_load_as_rgb(laced, laced_split):
    used = _rel(laced_split, laced_split.train + laced_split.val)
    assert sorted(used) == sorted(GOOD)
    assert laced_split.classes == ["bad", "good"] and not laced_split.presplit
    for s in laced_split.train + laced_split.val:
        assert laced_split.classes[s.label] == s.path.relative_to(laced).parts[0]
        img = load_rgb(s.path)
        assert img.mode == "RGB" and min(img.size) >= MIN_IMAGE_SIDE


def test_load_rgb_conversions(laced):
    g = laced / "good"
    assert load_rgb(g / "exif6.jpg").size == (24, 40)  # orientation 6 on 40x24 -> upright 24x40
    assert load_rgb(g / "rgba.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_rgb(g / "rgba.png").getpixel((5, 5)) == (255, 0, 0)
    assert load_rgb(g / "palette.gif").getpixel((0, 0)) == (0, 0, 255)
    gray16 = np.asarray(load_rgb(g / "gray16.png"))[..., 0]
    src = np.arange(32 * 32).reshape(32, 32) * 64
    assert np.array_equal(gray16, (src >> 8).astype(np.uint8))  # 16-bit scaled by >> 8
    assert np.asarray(load_rgb(g / "float.tif")).max() == 255  # float in [0, 1] -> 0..255
    assert load_rgb(g / "cmyk.jpg").mode == "RGB"
    assert load_rgb(g / "big.jpg", draft_size=224).size == (375, 375)  # libjpeg 1/8 scale
    assert load_rgb(g / "big.jpg").size == (3000, 3000)


@pytest.mark.parametrize(
    "name, make, pixel",
    [
        ("la.png", lambda: Image.new("LA", (20, 20), (100, 0)), (255, 255, 255)),  # fully transparent
        ("la_opaque.png", lambda: Image.new("LA", (20, 20), (100, 255)), (100, 100, 100)),
        ("int32.tif", lambda: Image.fromarray(np.arange(400, dtype=np.int32).reshape(20, 20) * 1000), (0, 0, 0)),
        ("i16b.tif", lambda: Image.new("I;16B", (20, 20), 40000), (156, 156, 156)),  # 40000 >> 8
        ("i16_8bit.png", lambda: Image.fromarray(np.full((20, 20), 200, np.uint16)), (200, 200, 200)),
        ("float.tif", lambda: Image.fromarray(np.full((20, 20), 0.5, np.float32)), (128, 128, 128)),
        ("float_wide.tif", lambda: Image.fromarray(np.linspace(-9, 9, 400, dtype=np.float32).reshape(20, 20)), (0, 0, 0)),
        ("bilevel.png", lambda: Image.new("1", (20, 20), 1), (255, 255, 255)),
        ("ycbcr.jpg", lambda: Image.new("YCbCr", (20, 20), (128, 128, 128)), None),
    ],
)
def test_load_rgb_any_mode(tmp_path, name, make, pixel):
    make().save(tmp_path / name)
    img = load_rgb(tmp_path / name)
    assert img.mode == "RGB" and img.size == (20, 20)
    if pixel is not None:
        assert img.getpixel((0, 0)) == pixel


def test_load_rgb_raises_data_error_for_bad_files(laced):
    for name, hint in [
        ("fake.png", "unreadable"),
        ("truncated.jpg", "truncated"),
        ("bomb.png", "too large"),
        ("missing.png", "unreadable"),
    ]:
        with pytest.raises(DataError, match=hint) as info:
            load_rgb(laced / "bad" / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_validation_drafts_big_jpegs_and_never_decodes_bombs(laced, monkeypatch, tmp_path):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path))  # a fresh scan memo: every file is checked again
    drafted, loaded = [], []
    real_draft, real_load = JpegImagePlugin.JpegImageFile.draft, ImageFile.ImageFile.load

    def draft(self, mode, size):
        drafted.append((Path(self.filename).name, size))
        return real_draft(self, mode, size)

    def load(self):
        loaded.append(Path(getattr(self, "filename", "") or "?").name)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    scan_images(laced)
    assert ("big.jpg", (256, 256)) in drafted
    assert "huge_header.png" not in loaded and "bomb.png" not in loaded
    assert "ok1.png" in loaded


def test_truncation_detected_even_if_global_flag_set_and_flag_restored(laced, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    split = scan_images(laced)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    reasons = {s.path.name: s.reason for s in split.skipped}
    assert reasons["truncated.jpg"].startswith("unreadable or truncated image")


def test_check_image_is_the_scans_check(laced, laced_split, monkeypatch):
    """check_image gives, file by file, the reason scan_images records (after its folder/extension checks)."""
    reasons = {s.path: s.reason for s in laced_split.skipped}
    for rel in ("bad/empty.jpg", "bad/truncated.jpg", "bad/fake.png", "bad/tiny.png", "bad/huge_header.png"):
        assert check_image(laced / rel) == reasons[laced / rel]
    for rel in GOOD:
        assert check_image(laced / rel) is None, rel
    assert check_image(laced / "bad" / "no-such.png") == "file not found"
    assert check_image(laced / "bad") == "not a regular file"
    assert check_image(laced / "good/big.jpg", max_pixels=1000).startswith("too large: 3000x3000")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # detection stays on, the flag is restored
    assert check_image(laced / "bad/truncated.jpg").startswith("unreadable or truncated image")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_load_rgb_from_bytes_and_file_objects(laced):
    path = laced / "good" / "exif6.jpg"
    want = np.asarray(load_rgb(path, draft_size=16))
    assert np.array_equal(np.asarray(load_rgb(path.read_bytes(), draft_size=16)), want)
    with open(path, "rb") as f:
        assert np.array_equal(np.asarray(load_rgb(f, draft_size=16)), want)
    with pytest.raises(DataError, match="Cannot use the image given in memory: unreadable or truncated image"):
        load_rgb(b"not an image")
    with pytest.raises(DataError, match="too large: 3000x3000"):
        load_rgb(io.BytesIO((laced / "good" / "big.jpg").read_bytes()), max_pixels=1000)


def test_resize_center_square_is_the_cache_transform(laced):
    for rel in ("good/exif6.jpg", "good/big.jpg", "good/rgba.png"):
        cached = DecodedImageCache(24, interpolation="bilinear").get(laced / rel)
        assert torch.equal(resize_center_square(load_rgb(laced / rel, draft_size=24), 24, "bilinear"), cached)
    assert data.resized_size(400, 300, 256) == (341, 256) and data.resized_size(10, 40, 8) == (8, 32)
    gray = resize_center_square(Image.new("L", (30, 20), 7), 10)  # any mode goes through to_rgb
    assert gray.shape == (3, 10, 10) and gray.dtype == torch.uint8 and int(gray.max()) == 7


def test_env_number(monkeypatch):
    monkeypatch.delenv("TL_TEST_NUMBER", raising=False)
    assert env_number("TL_TEST_NUMBER", 2.5) == 2.5
    monkeypatch.setenv("TL_TEST_NUMBER", " 0.5 ")
    assert env_number("TL_TEST_NUMBER", 2.5) == 0.5
    for bad in ("x", "-1", "0", "nan"):
        monkeypatch.setenv("TL_TEST_NUMBER", bad)
        with pytest.raises(ValueError, match="TL_TEST_NUMBER"):
            env_number("TL_TEST_NUMBER", 2.5)


# ----------------------------------------------------------------------------- decompression bombs
def test_bomb_limits_argument_and_env(tmp_path, monkeypatch):
    root = _tree(tmp_path, {"a": 3, "b": 3})
    _header_only_png(root / "a" / "bomb.png", 5000, 5000)  # 25 MP: under the default
    assert "unreadable" in {s.path.name: s.reason for s in scan_images(root).skipped}["bomb.png"]
    with pytest.raises(DataError, match="Found 0 images"):  # a real 16x16 image (256 px) is too many
        scan_images(root, max_pixels=100)
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "1000000")
    reason = {s.path.name: s.reason for s in scan_images(root).skipped}["bomb.png"]
    assert reason.startswith("too large: 5000x5000 pixels exceeds the limit of 1000000")
    with pytest.raises(DataError, match="TL_MAX_IMAGE_PIXELS"):
        load_rgb(root / "a" / "bomb.png")
    with pytest.raises(DataError, match="too large: 16x16"):
        load_rgb(root / "a" / "000.png", max_pixels=100)
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="TL_MAX_IMAGE_PIXELS='lots'"):
        scan_images(root)
    assert DEFAULT_MAX_IMAGE_PIXELS == 64_000_000


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_is_caught(tmp_path, monkeypatch):
    _tree(tmp_path, {"a": 2, "b": 2})
    _header_only_png(tmp_path / "a" / "warn.png", 10000, 10000)  # 100 MP: Pillow warns, not errors
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", str(150_000_000))  # our own guard lets it through
    reason = {s.path.name: s.reason for s in scan_images(tmp_path).skipped}["warn.png"]
    assert reason.startswith("too large") and "decompression-bomb" in reason


# ----------------------------------------------------------------------------- split
def test_split_is_stratified_with_clamped_val_counts(tmp_path):
    split = scan_images(_tree(tmp_path, {"a": 2, "b": 5, "c": 11, "d": 3}), val_fraction=0.2)
    assert split.counts() == {
        "a": {"train": 1, "val": 1},
        "b": {"train": 4, "val": 1},
        "c": {"train": 9, "val": 2},
        "d": {"train": 2, "val": 1},
    }
    split = scan_images(tmp_path, val_fraction=0.9)
    assert split.counts()["c"] == {"train": 1, "val": 10} and split.counts()["a"] == {"train": 1, "val": 1}
    assert not set(_rel(split, split.train)) & set(_rel(split, split.val))


def test_split_deterministic_per_seed_and_listing_order(tmp_path, monkeypatch):
    root = _tree(tmp_path, {"a": 12, "b": 12})
    first = scan_images(root, seed=3)
    assert scan_images(root, seed=3) == first  # dataclass equality: same classes, samples, skipped
    assert any(scan_images(root, seed=s).val != first.val for s in (4, 5, 6))
    real_scandir = os.scandir

    class Reversed:  # the filesystem lists entries in the opposite order
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = sorted(it, key=lambda e: e.name, reverse=True)

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return iter(self.entries)

    monkeypatch.setattr(os, "scandir", Reversed)
    again = scan_images(root, seed=3)
    assert (_rel(again, again.train), _rel(again, again.val)) == (_rel(first, first.train), _rel(first, first.val))
    assert again.fingerprint() == first.fingerprint()


def test_fingerprint_tracks_data_and_split(tmp_path):
    root = _tree(tmp_path, {"a": 6, "b": 6})
    fp = scan_images(root).fingerprint()
    assert len(fp) == 64 and scan_images(root).fingerprint() == fp
    assert scan_images(root, seed=1).fingerprint() != fp
    target = root / "a" / "000.png"
    st_ = target.stat()
    os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    fp2 = scan_images(root).fingerprint()
    assert fp2 != fp
    _put(root / "b" / "new.png")
    assert scan_images(root).fingerprint() != fp2


def test_presplit_folders_are_respected(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        _tree(tmp_path / split, {"cats": n, "dogs": n})
    _put(tmp_path / "notes.txt", b"x")
    _put(tmp_path / "train" / "stray.png")
    _put(tmp_path / "test" / "cats" / "t.png")
    split = scan_images(tmp_path, val_fraction=0.5)
    assert split.presplit and split.classes == ["cats", "dogs"]
    assert split.counts() == {"cats": {"train": 4, "val": 2}, "dogs": {"train": 4, "val": 2}}
    assert all(p.startswith("train/") for p in _rel(split, split.train))
    assert all(p.startswith("val/") for p in _rel(split, split.val))
    reasons = {s.path.relative_to(tmp_path).as_posix(): s.reason for s in split.skipped}
    assert reasons == {
        "notes.txt": "not inside a class folder",
        "train/stray.png": "not inside a class folder",
        "test/cats/t.png": "outside train/ and val/ (the folder is pre-split)",
    }
    assert scan_images(tmp_path, val_fraction=0.1, seed=9).fingerprint() == split.fingerprint()


def test_presplit_class_missing_from_val_is_an_error(tmp_path):
    _tree(tmp_path / "train", {"cats": 3, "dogs": 3, "birds": 2})
    _tree(tmp_path / "val", {"cats": 1, "dogs": 1})
    with pytest.raises(DataError, match="Class 'birds' has 0 usable images") as info:
        scan_images(tmp_path)
    assert str(tmp_path / "val" / "birds") in str(info.value)


# ----------------------------------------------------------------------------- errors
def _error(root, **kw) -> str:
    with pytest.raises(DataError) as info:
        scan_images(root, **kw)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError)
    return msg


def test_error_missing_root_and_file_root(tmp_path):
    missing = tmp_path / "nope"
    assert _error(missing) == (f"Data folder not found: {missing}. Pick an existing folder with one sub-folder per class.")
    f = _put(tmp_path / "file.png")
    assert "is a file, not a folder" in _error(f) and str(f) in _error(f)


def test_error_no_class_folders(tmp_path):
    _put(tmp_path / "a.png")
    msg = _error(tmp_path)
    assert msg.startswith(f"No class sub-folders in {tmp_path}") and "one sub-folder per class" in msg


def test_error_zero_usable_images(tmp_path):
    _put(tmp_path / "a" / "x.txt", b"x")
    _put(tmp_path / "b" / "y.png", b"")
    msg = _error(tmp_path)
    assert msg.startswith(f"Found 0 images in subfolders of {tmp_path}. Supported extensions are " + ", ".join(IMAGE_EXTENSIONS))
    assert "(2 file(s) skipped there, e.g. 'x.txt': not an image (extension .txt))" in msg


def test_error_only_one_class(tmp_path):
    _tree(tmp_path, {"cats": 4})
    assert _error(tmp_path) == (f"Found only one class ('cats') in {tmp_path}: a classifier needs at least two class sub-folders.")


def test_error_class_with_too_few_images(tmp_path):
    _tree(tmp_path, {"cats": 4, "dogs": 1})
    _put(tmp_path / "dogs" / "broken.jpg", b"")
    msg = _error(tmp_path)
    assert msg.startswith(f"Class 'dogs' has 1 usable image in {tmp_path}; each class needs at least 2 (one to train, one to validate)")
    assert "broken.jpg" in msg and msg.endswith(f"Add images to {tmp_path / 'dogs'} or remove the folder.")


def test_error_empty_class_folder(tmp_path):
    _tree(tmp_path, {"cats": 4})
    (tmp_path / "dogs").mkdir()
    assert _error(tmp_path).startswith(f"Class 'dogs' has 0 usable images in {tmp_path}")


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.95, 1.0, math.nan, "0.2", True])
def test_error_bad_val_fraction(tmp_path, bad):
    _tree(tmp_path, {"a": 3, "b": 3})
    assert f"val_fraction={bad!r}" in _error(tmp_path, val_fraction=bad)


# ----------------------------------------------------------------------------- cache
def test_cache_shape_dtype_and_center_crop(tmp_path):
    strip = Image.new("RGB", (60, 20), "red")
    strip.paste((0, 255, 0), (20, 0, 40, 20))
    strip.paste((0, 0, 255), (40, 0, 60, 20))
    strip.save(tmp_path / "strip.png")
    t = DecodedImageCache(20, interpolation="nearest").get(tmp_path / "strip.png")
    assert t.shape == (3, 20, 20) and t.dtype == torch.uint8
    assert torch.equal(t, torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 20, 20))
    tall = DecodedImageCache(16, interpolation="not-a-mode").get(_noise_jpeg(tmp_path / "tall.jpg", (30, 90)))
    assert tall.shape == (3, 16, 16)


def test_cache_decodes_each_image_once(tmp_path, monkeypatch):
    split = scan_images(_tree(tmp_path, {"a": 4, "b": 4}))
    calls = collections.Counter()
    real = data.load_rgb

    def counting(path, **kw):
        calls[Path(path)] += 1
        return real(path, **kw)

    monkeypatch.setattr(data, "load_rgb", counting)
    cache = DecodedImageCache(16)
    x, y = cache.stack(split.train + split.train[:2], workers=3)
    assert x.shape == (len(split.train) + 2, 3, 16, 16) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [s.label for s in split.train + split.train[:2]]
    assert sum(calls.values()) == len(split.train) and max(calls.values()) == 1
    x2, _ = cache.stack(split.train)
    assert torch.equal(x2, x[: len(split.train)]) and sum(calls.values()) == len(split.train)
    cache.stack(split.train + split.val)
    assert sum(calls.values()) == 8 and len(cache) == 8 and cache.nbytes == 8 * 3 * 16 * 16
    empty_x, empty_y = cache.stack([])
    assert empty_x.shape == (0, 3, 16, 16) and empty_y.shape == (0,)


def test_cache_memory_limit(tmp_path, monkeypatch):
    samples = [Sample(_put(tmp_path / f"{i}.png"), 0) for i in range(3)]
    cache = DecodedImageCache(16, max_bytes=2 * 3 * 16 * 16)
    with pytest.raises(DataError, match=r"3 images at 16x16 need 0\.00 GiB, above the in-memory cache limit"):
        cache.stack(samples)
    assert len(cache) == 0  # checked before decoding anything
    cache.stack(samples[:2])
    with pytest.raises(DataError, match="TL_MAX_CACHE_GB"):
        cache.get(samples[2].path)
    monkeypatch.setenv("TL_MAX_CACHE_GB", "0.5")
    assert DecodedImageCache(16).max_bytes == 2**29
    monkeypatch.delenv("TL_MAX_CACHE_GB")
    assert DecodedImageCache(16).max_bytes == 4 * 2**30


# ----------------------------------------------------------------------------- property test
_NAME_CHARS = st.characters(categories=("L", "N", "Zs"), include_characters="-_()'")
_CLASS_NAMES = st.text(_NAME_CHARS, min_size=1, max_size=10).filter(
    lambda s: s not in ("train", "val", "__MACOSX") and not s.startswith(".")
)
_JUNK = {
    "notes.txt": (b"hi", "not an image"),
    "empty.jpg": (b"", "empty file"),
    ".hidden.png": (TINY_PNG, "hidden file"),
    "fake.png": (b"nope", "unreadable or truncated"),
    "tiny.png": (png_bytes((1, 1)), "too small"),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    classes=st.dictionaries(
        _CLASS_NAMES,
        st.tuples(st.integers(2, 7), st.booleans(), st.lists(st.sampled_from(sorted(_JUNK)), max_size=3)),
        min_size=2,
        max_size=4,
    ),
    root_junk=st.booleans(),
    val_fraction=st.sampled_from([0.05, 0.2, 0.5, 0.9]),
    seed=st.integers(0, 2**31),
)
def test_property_every_file_accounted_for(classes, root_junk, val_fraction, seed):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected_skip: dict[str, str] = {}
        for name, (n, nested, junk) in classes.items():
            for i in range(n):
                _put(root / name / ("sub dir" if nested and i == 0 else "") / f"img {i}.png")
            for j in junk:
                _put(root / name / j, _JUNK[j][0])
                expected_skip[f"{name}/{j}"] = _JUNK[j][1]
        if root_junk:
            _put(root / "loose.png")
            expected_skip["loose.png"] = "not inside a class folder"
        split = scan_images(root, val_fraction=val_fraction, seed=seed)

        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        listed = _rel(split, split.train) + _rel(split, split.val) + _rel(split, split.skipped)
        assert collections.Counter(listed) == collections.Counter(on_disk)
        reasons = {s.path.relative_to(root).as_posix(): s.reason for s in split.skipped}
        assert set(reasons) == set(expected_skip)
        assert all(reasons[rel].startswith(expected) for rel, expected in expected_skip.items())
        assert split.classes == sorted(classes)
        for s in split.train + split.val:
            assert split.classes[s.label] == s.path.relative_to(root).parts[0]
        for name, (n, _, _) in classes.items():
            n_val = min(max(round(n * val_fraction), 1), n - 1)
            assert split.counts()[name] == {"train": n - n_val, "val": n_val}

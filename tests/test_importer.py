"""Tests for tl_dashboard.importer: safe zip import, single-image uploads and the allowed-roots guard."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import tempfile
import time
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.files import png_bytes
from tl_dashboard import importer
from tl_dashboard.data import Skipped, scan_images
from tl_dashboard.importer import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    ArchiveError,
    ImportReport,
    PathNotAllowed,
    datasets_dir,
    import_zip,
    new_upload_dir,
    resolve_allowed_path,
    safe_member_path,
    save_images,
)


# ----------------------------------------------------------------------------- helpers
def _png(size: tuple[int, int] = (20, 20), color=(200, 30, 30)) -> bytes:
    return png_bytes(size, color)


TINY_PNG = _png()


def _zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name or ZipInfo, payload) pairs. Returns: the archive's bytes."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of some tests
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, payload in entries:
                zf.writestr(name, payload)
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but holds no pixels: a cheap decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _patch_first_member(raw: bytes, *, size: int | None = None, flag: int | None = None) -> bytes:
    """Rewrite the first member's uncompressed size and/or flag bits in both its local and central header."""
    out = bytearray(raw)
    local, central = out.find(b"PK\x03\x04"), out.find(b"PK\x01\x02")
    if size is not None:
        struct.pack_into("<I", out, local + 22, size)
        struct.pack_into("<I", out, central + 24, size)
    if flag is not None:
        struct.pack_into("<H", out, local + 6, flag)
        struct.pack_into("<H", out, central + 8, flag)
    return bytes(out)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    for key in ("TL_ALLOWED_ROOTS", "TL_MAX_UPLOAD_GB", "TL_MAX_UPLOAD_FILES", "TL_MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(key, raising=False)


def _uploads() -> list[Path]:
    return sorted(datasets_dir().iterdir())


# ----------------------------------------------------------------------------- normal imports
def test_defaults_and_upload_dir():
    assert DEFAULT_MAX_TOTAL_BYTES == 2 * 2**30 and DEFAULT_MAX_FILES == 20_000
    a, b = new_upload_dir(), new_upload_dir("webcam")
    assert a != b and a.is_dir() and b.is_dir() and a.parent == datasets_dir()
    assert re.fullmatch(r"upload-\d{8}-\d{6}-[0-9a-f]{4}", a.name)
    assert b.name.startswith("webcam-")
    with pytest.raises(ValueError, match="prefix"):
        new_upload_dir("../x")


def test_import_wrapped_class_folders_with_unicode_and_junk():
    entries = [(f"pets/chats-été/{i}.png", _png(color=(200, 10 * i, 0))) for i in range(3)]
    entries += [(f"pets/dogs/{i}.PNG", _png(color=(0, 10 * i, 200))) for i in range(3)]
    entries += [
        ("pets/", b""),
        ("pets/notes.txt", b"hello"),
        ("pets/dogs/.DS_Store", b"x"),
        ("__MACOSX/pets/dogs/._0.PNG", b"x"),
        ("pets/dogs/fake.jpg", b"not really a jpeg"),
        ("pets/broken/", b""),
        ("pets/broken/a.png", b"\x89PNG\r\n\x1a\n"),
    ]
    report = import_zip(_zip(entries))
    assert isinstance(report, ImportReport)
    upload = _uploads()[0]
    assert report.root == upload / "pets"
    assert len(report.written) == 6 and all(p.is_file() and upload in p.parents for p in report.written)
    split = scan_images(report.root)
    assert split.classes == ["chats-été", "dogs"] and not split.skipped
    reasons = {s.path.as_posix(): s.reason for s in report.skipped}
    assert all(isinstance(s, Skipped) for s in report.skipped)
    assert reasons["pets/notes.txt"] == "not an image (extension .txt)"
    assert reasons["pets/dogs/.DS_Store"] == reasons["__MACOSX/pets/dogs/._0.PNG"] == "hidden file"
    assert reasons["pets/dogs/fake.jpg"].startswith("unreadable or truncated image")
    assert "pets/broken/a.png" in reasons
    assert not (upload / "pets" / "broken").exists()  # only bad images: folder pruned, scan still works
    assert not (upload / "__MACOSX").exists() and not (upload / "pets" / "notes.txt").exists()


def test_import_flat_class_folders_into_new_or_empty_dir(tmp_path):
    raw = _zip([("a/1.png", TINY_PNG), ("a/2.png", TINY_PNG), ("b/1.png", TINY_PNG), ("b/2.png", TINY_PNG)])
    report = import_zip(raw, tmp_path / "new" / "deeper")
    assert report.root == tmp_path / "new" / "deeper"
    assert scan_images(report.root).classes == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    zpath = tmp_path / "flat.zip"
    zpath.write_bytes(raw)
    assert import_zip(zpath, empty).root == empty
    with open(zpath, "rb") as fh:  # a binary stream, as a browser upload is
        assert len(import_zip(fh).written) == 4

    class Pipe(io.RawIOBase):  # a non-seekable stream
        def __init__(self):
            self._src = io.BytesIO(raw)

        def readable(self):
            return True

        def readinto(self, b):
            return self._src.readinto(b)

    assert len(import_zip(io.BufferedReader(Pipe())).written) == 4


def test_utf8_names_without_the_utf8_flag_are_kept(tmp_path):
    """Many zip tools store UTF-8 names without setting the flag; zipfile would show them as cp437."""
    raw = _zip([("caf__/1.png", TINY_PNG), ("caf__/2.png", TINY_PNG), ("tea/1.png", TINY_PNG)])
    raw = raw.replace(b"caf__", "café".encode())  # same byte length, flag bit 11 still clear
    report = import_zip(raw, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["café", "tea"]
    assert len(report.written) == 3


def test_existing_non_empty_folder_is_refused_and_untouched(tmp_path):
    into = tmp_path / "mine"
    into.mkdir()
    (into / "1.png").write_bytes(b"precious")
    raw = _zip([("1.png", TINY_PNG), ("a/1.png", TINY_PNG)])
    with pytest.raises(ArchiveError, match="not empty"):
        import_zip(raw, into)
    assert _tree(into) == {"1.png"} and (into / "1.png").read_bytes() == b"precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ArchiveError, match="not a folder"):
        import_zip(raw, afile)


def test_not_a_zip():
    with pytest.raises(ArchiveError, match="is not a zip archive"):
        import_zip(b"plain text, not a zip")


# ----------------------------------------------------------------------------- refusals
EVIL = [
    "../evil.txt",
    "a/../../evil.png",
    "/tmp/abs_evil_{u}.txt",
    "C:\\evil.png",
    "C:evil.png",
    "\\\\server\\share\\evil.png",
    "cats/..\\..\\evil.png",
]


@pytest.mark.parametrize("evil", EVIL)
def test_unsafe_member_refuses_whole_archive(tmp_path, evil):
    evil = evil.format(u=uuid.uuid4().hex)
    work = tmp_path / "work"
    work.mkdir()
    raw = _zip([("cats/1.png", TINY_PNG), (evil, b"owned"), ("dogs/1.png", TINY_PNG)])
    into = work / "sandbox" / "out"
    with pytest.raises(ArchiveError) as info:
        import_zip(raw, into)
    msg = str(info.value)
    assert "\n" not in msg and repr(evil) in msg and "relative path" in msg
    assert _tree(work) == set()  # neither `into` nor its parent was created
    assert not any((tmp_path / name).exists() for name in ("evil.txt", "evil.png"))
    if evil.startswith("/"):
        assert not Path(evil).exists()
    with pytest.raises(ArchiveError):
        import_zip(raw)  # into=None: no upload folder left behind either
    assert _uploads() == []


def test_symlink_member_refused(tmp_path):
    link = zipfile.ZipInfo("cats/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    raw = _zip([("cats/1.png", TINY_PNG), (link, "/etc/passwd")])
    with pytest.raises(ArchiveError, match="symbolic link") as info:
        import_zip(raw, tmp_path / "out")
    assert "'cats/link.png'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_encrypted_member_refused(tmp_path):
    raw = _patch_first_member(_zip([("cats/1.png", TINY_PNG)]), flag=0x1)
    with pytest.raises(ArchiveError, match="encrypted"):
        import_zip(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory) -> Path:
    """One member of 1 GiB of zeros, streamed through a zip64 writer: ~1 MB on disk, a few seconds."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zero = bytes(2**24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("cats/zeros.png", "w", force_zip64=True) as out:
        for _ in range(64):
            out.write(zero)
    return path


def test_one_gib_zip_bomb_refused_quickly(bomb_zip, tmp_path):
    assert bomb_zip.stat().st_size < 8 * 2**20
    t0 = time.perf_counter()
    with pytest.raises(ArchiveError, match="zip bomb") as info:
        import_zip(bomb_zip)
    elapsed = time.perf_counter() - t0
    print(f"\n1 GiB zip bomb refused in {elapsed * 1000:.1f} ms")  # measured, not asserted
    assert "'cats/zeros.png'" in str(info.value)
    assert _uploads() == []
    with pytest.raises(ArchiveError):
        import_zip(bomb_zip, tmp_path / "out", max_total_bytes=4 * 2**30)
    assert not (tmp_path / "out").exists()


def test_many_small_bomb_members_refused(tmp_path):
    """Each member is under the per-member floor; together they expand over 100:1."""
    zero = bytes(4 * 2**20)
    raw = _zip([(f"cats/{i}.png", zero) for i in range(20)])
    with pytest.raises(ArchiveError, match="zip bomb"):
        import_zip(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_header_that_understates_size_is_caught(tmp_path):
    payload = os.urandom(1000) + bytes(200_000)
    raw = _patch_first_member(_zip([("cats/big.png", payload), ("cats/1.png", TINY_PNG)]), size=100)
    with pytest.raises(ArchiveError, match="cannot be read"):
        import_zip(raw)
    assert _uploads() == []


def test_running_budget_aborts_when_sizes_lie(tmp_path, monkeypatch):
    """Simulate a reader whose declared sizes lie (all 0): the streamed byte budget still stops it."""
    monkeypatch.setattr(importer, "_declared_size", lambda info: 0)
    raw = _zip([("cats/1.png", TINY_PNG), ("cats/big.png", os.urandom(200_000))])
    with pytest.raises(ArchiveError, match="lies about its sizes") as info:
        import_zip(raw, tmp_path / "out", max_total_bytes=50_000)
    assert "'cats/big.png'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_declared_total_over_budget_refused(tmp_path):
    raw = _zip([("cats/a.png", os.urandom(30_000)), ("cats/b.png", os.urandom(30_000))], zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="TL_MAX_UPLOAD_GB") as info:
        import_zip(raw, tmp_path / "out", max_total_bytes=50_000)
    assert "'cats/b.png'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_too_many_files_refused(tmp_path, monkeypatch):
    raw = _zip([(f"cats/{i}.png", TINY_PNG) for i in range(6)])
    with pytest.raises(ArchiveError, match="6 members, above the limit of 5"):
        import_zip(raw, tmp_path / "out", max_files=5)
    monkeypatch.setenv("TL_MAX_UPLOAD_FILES", "3")
    with pytest.raises(ArchiveError, match="TL_MAX_UPLOAD_FILES"):
        import_zip(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="max_files"):
        import_zip(raw, tmp_path / "out", max_files=0)


def test_duplicate_member_names_never_overwrite(tmp_path):
    raw = _zip(
        [("a/1.png", TINY_PNG), ("a/1.png", _png(color=(0, 0, 0))), ("b/1.png", TINY_PNG), ("a/1.png/", b""), ("a/1.png/x.png", TINY_PNG)]
    )
    report = import_zip(raw, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "1.png").read_bytes() == TINY_PNG
    assert _tree(tmp_path / "out") == {"a", "a/1.png", "b", "b/1.png"}
    assert [s.reason.split(" (")[0] for s in report.skipped] == ["name clashes with another member"] * 3


# ----------------------------------------------------------------------------- save_images
def test_save_images_never_overwrites_and_sanitizes(tmp_path):
    cls = tmp_path / "data" / "cats"
    report = save_images(
        [("x.png", TINY_PNG), ("x.png", _png(color=(0, 0, 255))), ("../../x.png", TINY_PNG), ("C:\\Users\\me\\pic.png", TINY_PNG)], cls
    )
    assert report.root == cls
    assert [p.name for p in report.written] == ["x.png", "x-1.png", "x-2.png", "pic.png"]
    assert _tree(tmp_path) == {
        "data",
        "data/cats",
        "data/cats/x.png",
        "data/cats/x-1.png",
        "data/cats/x-2.png",
        "data/cats/pic.png",
    }  # nothing escaped, no temp files
    again = save_images([("x.png", b"" + TINY_PNG)], cls)
    assert again.written == [cls / "x-3.png"] and (cls / "x.png").read_bytes() == TINY_PNG


def test_save_images_rejects_non_images_and_bombs(tmp_path):
    cls = tmp_path / "cats"
    report = save_images(
        [
            ("notes.jpg", b"just some text"),
            ("doc.txt", TINY_PNG),
            ("empty.png", b""),
            ("huge.png", _header_only_png(100_000, 100_000)),
            ("image", TINY_PNG),
        ],
        cls,
    )
    assert [p.name for p in report.written] == ["image.png"]  # webcam-style name: extension from the format
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert reasons["notes.jpg"].startswith("unreadable or truncated image")
    assert ".tl-upload" not in reasons["notes.jpg"]  # the temp file's name never reaches the user
    assert reasons["doc.txt"] == "not an image (extension .txt)"
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["huge.png"].startswith("too large")
    assert _tree(cls) == {"image.png"}


# ----------------------------------------------------------------------------- resolve_allowed_path
def test_resolve_allowed_path(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    assert resolve_allowed_path(root / "data", [root]) == (root / "data").resolve()
    assert resolve_allowed_path(root / "not-yet", [root]) == (root / "not-yet").resolve()
    with pytest.raises(PathNotAllowed) as info:
        resolve_allowed_path(root / ".." / "outside", [root])
    assert isinstance(info.value, PermissionError)
    assert str(root.resolve()) in str(info.value) and "outside" in str(info.value)
    (root / "sneaky").symlink_to(outside)
    with pytest.raises(PathNotAllowed):
        resolve_allowed_path(root / "sneaky", [root])
    with pytest.raises(PathNotAllowed):
        resolve_allowed_path(root / "sneaky" / "deeper", [root])
    assert resolve_allowed_path(outside) == outside.resolve()  # no roots configured: anything goes
    monkeypatch.setenv("TL_ALLOWED_ROOTS", os.pathsep.join([str(root), str(tmp_path / "other")]))
    assert resolve_allowed_path(root / "data") == (root / "data").resolve()
    with pytest.raises(PathNotAllowed, match="TL_ALLOWED_ROOTS"):
        resolve_allowed_path(outside)


# ----------------------------------------------------------------------------- safe_member_path
@pytest.mark.parametrize("name", ["", "/", "./", "../x", "a/../../x", "/etc/x", "C:\\x", "c:x", "\\\\srv\\x", "a\x00b", "a/" + "x" * 300])
def test_safe_member_path_refuses(name, tmp_path):
    with pytest.raises(ArchiveError) as info:
        safe_member_path(name, tmp_path)
    assert repr(name) in str(info.value) and "\n" not in str(info.value)


def test_safe_member_path_accepts(tmp_path):
    assert safe_member_path("a/b.png", tmp_path) == tmp_path / "a" / "b.png"
    assert safe_member_path("a\\b.png", tmp_path) == tmp_path / "a" / "b.png"
    assert safe_member_path("./a//b/./été.png", tmp_path) == tmp_path / "a" / "b" / "été.png"
    assert safe_member_path("a..b/..c", tmp_path) == tmp_path / "a..b" / "..c"


# ----------------------------------------------------------------------------- properties
_NAME_CHARS = st.sampled_from(["a", "b", ".", "..", "/", "\\", "é", "文", ":", "C:", " ", "~", "$", "\n", "png"])
_NAMES = st.lists(_NAME_CHARS, min_size=1, max_size=8).map("".join)


@settings(max_examples=50, deadline=None)
@given(names=st.lists(st.tuples(_NAMES, st.sampled_from(["", ".png", "/"])).map("".join), min_size=1, max_size=5))
def test_property_import_writes_only_inside_into(names):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        into = base / "sandbox" / "into"
        raw = _zip([(n, TINY_PNG) for n in names])
        try:
            report = import_zip(raw, into)
        except ArchiveError:
            assert _tree(base) == set()
            return
        for p in base.rglob("*"):
            assert p == into.parent or p == into or into in p.parents, p
            assert not p.is_symlink()
        assert all(into in p.parents for p in report.written)


@settings(max_examples=50, deadline=None)
@given(name=st.text(alphabet=st.sampled_from("ab./\\:C\x00é文 "), max_size=12) | st.text(max_size=12))
def test_property_safe_member_path_stays_inside(name):
    dest = Path("/srv/tl/dest")
    try:
        out = safe_member_path(name, dest)
    except ArchiveError:
        return
    assert out != dest and dest in out.parents
    assert ".." not in out.relative_to(dest).parts

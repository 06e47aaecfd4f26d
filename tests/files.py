"""Small files the tests build in memory: images and zips."""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from pathlib import Path

from PIL import Image


def png_bytes(size: tuple[int, int] = (16, 16), color=(200, 30, 30)) -> bytes:
    """A solid-colour PNG, encoded."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip holding ``{member name: payload}``, encoded."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
    return buf.getvalue()


def plant_label_errors(root: Path, per_class: int, seed: int = 0) -> set[str]:
    """Move ``per_class`` images of every class folder into another class: known label errors.

    Returns: the moved images' new paths.
    """
    rng = random.Random(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    planted = set()
    for c in classes:
        for f in rng.sample(sorted((root / c).iterdir()), per_class):
            dest = root / rng.choice([d for d in classes if d != c]) / f"planted_{f.name}"
            shutil.move(f, dest)
            planted.add(str(dest))
    return planted

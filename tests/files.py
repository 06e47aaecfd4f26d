"""Small files the tests build in memory: images and zips."""
from __future__ import annotations

import io
import zipfile

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

"""Small image folders generated on the fly for benchmarks/bench_quality.py (never committed).

Three kinds, each seeded, written as PNGs into ``root/<kind>/<class>/<i>.png``:

* ``glyphs``  - letters rendered from the system's TrueType fonts (``/usr/share/fonts``), random
  font, size, rotation, position and colours;
* ``shapes``  - shapes and textures (circle, square, triangle, cross, ring, stripes, checker,
  dots) in random colours over noise;
* ``scenes``  - photo-like scenes (sunset, sea, forest, night, desert, snow, city, fog) from
  gradients, horizons and blurred blobs.

Nothing in the product was tuned on these: they are generated fresh for each benchmark run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 96


def system_fonts() -> list[str]:
    fonts = sorted(str(p) for p in Path("/usr/share/fonts").rglob("*.ttf"))
    if not fonts:
        raise SystemExit("No TrueType fonts under /usr/share/fonts: apt-get install fonts-dejavu")
    return fonts


def _noise(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> Image.Image:
    base = rng.integers(lo, hi, size=(3,))
    arr = np.clip(base + rng.normal(0, 40, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def glyph(cls: str, rng: np.random.Generator, fonts: list[str]) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(255 - v if abs(255 - 2 * v) > 60 else (v + 128) % 256 for v in bg)
    img = Image.new("RGB", (SIZE * 2, SIZE * 2), bg)
    font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(60, 120)))
    d = ImageDraw.Draw(img)
    d.text((SIZE + rng.integers(-25, 25), SIZE + rng.integers(-25, 25)), cls, fill=fg, font=font, anchor="mm")
    img = img.rotate(float(rng.uniform(-25, 25)), fillcolor=bg)
    return img.resize((SIZE, SIZE), Image.BILINEAR)


def _poly(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n)) for i in range(n)]


def shape(cls: str, rng: np.random.Generator) -> Image.Image:
    img = _noise(rng)
    d = ImageDraw.Draw(img)
    col = tuple(int(v) for v in rng.integers(0, 256, 3))
    cx, cy, r = rng.uniform(35, 61), rng.uniform(35, 61), rng.uniform(16, 30)
    rot = rng.uniform(0, 2 * math.pi)
    w = int(rng.integers(3, 7))
    if cls == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col)
    elif cls == "square":
        d.polygon(_poly(cx, cy, r * 1.2, 4, rot), fill=col)
    elif cls == "triangle":
        d.polygon(_poly(cx, cy, r * 1.2, 3, rot), fill=col)
    elif cls == "cross":
        for a in (rot, rot + math.pi / 2):
            d.line([(cx - r * math.cos(a), cy - r * math.sin(a)), (cx + r * math.cos(a), cy + r * math.sin(a))], fill=col, width=w + 4)
    elif cls == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=col, width=w)
    elif cls == "stripes":
        step = int(rng.integers(8, 16))
        for k in range(-SIZE, 2 * SIZE, step):
            d.line([(k, 0), (k + SIZE * math.tan(rot % 1.2 - 0.6), SIZE)], fill=col, width=step // 2)
    elif cls == "checker":
        step = int(rng.integers(10, 20))
        for i in range(0, SIZE, step):
            for j in range(0, SIZE, step):
                if (i // step + j // step) % 2 == 0:
                    d.rectangle((i, j, i + step - 1, j + step - 1), fill=col)
    elif cls == "dots":
        for _ in range(int(rng.integers(12, 30))):
            x, y, s = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(2, 5)
            d.ellipse((x - s, y - s, x + s, y + s), fill=col)
    return img


SCENES = ["sunset", "sea", "forest", "night", "desert", "snow", "city", "fog"]


def _gradient(top: np.ndarray, bottom: np.ndarray, h0: int, h1: int, arr: np.ndarray) -> None:
    t = np.linspace(0, 1, max(1, h1 - h0))[:, None, None]
    arr[h0:h1] = top * (1 - t) + bottom * t


def scene(cls: str, rng: np.random.Generator) -> Image.Image:
    def j(c):
        return np.clip(np.array(c, float) + rng.normal(0, 18, 3), 0, 255)

    palettes = {  # sky top, sky bottom, ground top, ground bottom
        "sunset": ([60, 40, 120], [250, 140, 40], [60, 30, 20], [20, 10, 10]),
        "sea": ([90, 160, 230], [190, 220, 250], [20, 90, 160], [10, 40, 90]),
        "forest": ([120, 180, 230], [200, 230, 240], [40, 100, 40], [20, 50, 20]),
        "night": ([5, 5, 25], [20, 25, 60], [10, 10, 15], [0, 0, 5]),
        "desert": ([120, 190, 240], [220, 230, 240], [230, 190, 120], [190, 140, 80]),
        "snow": ([150, 180, 210], [220, 230, 240], [245, 245, 250], [210, 215, 225]),
        "city": ([140, 160, 190], [200, 200, 210], [70, 70, 75], [40, 40, 45]),
        "fog": ([180, 180, 185], [200, 200, 200], [160, 165, 160], [140, 145, 140]),
    }
    st, sb, gt, gb = (j(c) for c in palettes[cls])
    horizon = int(rng.uniform(0.35, 0.7) * SIZE)
    arr = np.zeros((SIZE, SIZE, 3))
    _gradient(st, sb, 0, horizon, arr)
    _gradient(gt, gb, horizon, SIZE, arr)
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # blobs: trees, dunes, buildings, stars, waves, clouds
        x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
        s = rng.uniform(3, 14)
        if cls == "city":
            bw, bh = rng.uniform(6, 16), rng.uniform(15, 45)
            d.rectangle((x, horizon - bh, x + bw, horizon), fill=tuple(int(v) for v in j([50, 50, 60])))
        elif cls == "night":
            d.ellipse((x, y * 0.5, x + 1.5, y * 0.5 + 1.5), fill=(240, 240, 200))
        elif cls == "forest":
            d.polygon([(x, horizon + 5), (x + s, horizon + 5), (x + s / 2, horizon - 3 * s)], fill=tuple(int(v) for v in j([20, 70, 25])))
        else:
            d.ellipse(
                (x - s, y - s / 2, x + s, y + s / 2), fill=tuple(int(v) for v in j(arr[int(min(y, SIZE - 1)), int(min(x, SIZE - 1))] + 25))
            )
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 2.5 if cls != "fog" else 4.0))))
    noise = rng.normal(0, 8, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(img, float) + noise, 0, 255).astype(np.uint8))


def make_folder(root: Path, kind: str, per_class: int = 40, seed: int = 0) -> Path:
    """Write one folder of ``kind`` (glyphs | shapes | scenes) under ``root``; return its path."""
    rng = np.random.default_rng(seed)
    random.seed(seed)
    out = Path(root) / kind
    if kind == "glyphs":
        fonts = system_fonts()
        classes, draw = list("ABCDEFGHKR"), lambda c: glyph(c, rng, fonts)
    elif kind == "shapes":
        classes, draw = ["circle", "square", "triangle", "cross", "ring", "stripes", "checker", "dots"], lambda c: shape(c, rng)
    elif kind == "scenes":
        classes, draw = SCENES, lambda c: scene(c, rng)
    else:
        raise ValueError(kind)
    for c in classes:
        (out / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(c).save(out / c / f"{i:03d}.png")
    return out

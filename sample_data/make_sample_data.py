#!/usr/bin/env python3
"""Generate the ``emoji3`` demo image data set (animals / food / vehicles).

Source
------
Glyphs are rendered offline from the *Noto Color Emoji* font shipped by the
Debian package ``fonts-noto-color-emoji``
(``/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf``), upstream
https://github.com/googlefonts/noto-emoji (Google Inc.).

Licence
-------
The Noto emoji images are licensed under the Apache License 2.0; the font file
itself is under the SIL Open Font License 1.1. The generated images are
derived from the emoji images and are distributed under Apache-2.0 as well.
No font file is redistributed.

What it does
------------
Each picture composites one emoji (cycled evenly through the class's glyph
list) onto a random background (smooth colour gradient + mild noise, or a
smooth random texture), scaled to 45-95 % of the frame, rotated by up to
+/-25 degrees, placed at a random position, sometimes mirrored, sometimes
slightly blurred, with random brightness/contrast. Everything is driven by a
fixed seed, so a rerun with the same Pillow/NumPy/FreeType gives byte-identical
JPEG files.

Usage::

    python sample_data/make_sample_data.py [--out sample_data/emoji3]
        [--per-class 60] [--size 160] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
FONT_SIZE = 109  # CBDT bitmap fonts only render at their strike size

# Single-codepoint emoji (no ZWJ sequences). Glyphs that do not render are
# dropped at run time.
CLASSES: dict[str, str] = {
    "animals": (
        "🐶🐱🐭🐹🐰🦊🐻🐼🐨🐯🦁🐮🐷🐸🐵🐔🐧🐦🐤🦆🦅🦉🦇🐺🐗🐴🦄🐝🦋🐌"
        "🐞🐢🐍🦎🦖🦕🐙🦑🦀🐠🐟🐬🐳🦈🐊🐅🦓🦍🐘🦛🦏🐫🦒🦘🐄🐎🐖🐑🦙🐐"
        "🦌🐩🐈🐓🦃🦚🦜🦢🦩🐇🦝🦨🦦🦥🐁🐿🦔🦫🦭🦬"
    ),
    "food": (
        "🍏🍎🍐🍊🍋🍌🍉🍇🍓🫐🍈🍒🍑🥭🍍🥥🥝🍅🍆🥑🥦🥬🥒🌶🫑🌽🥕🧄🧅🥔"
        "🍠🥐🥯🍞🥖🥨🧀🥚🍳🥞🧇🥓🥩🍗🍖🌭🍔🍟🍕🥪🥙🌮🌯🥗🥘🍝🍜🍲🍛🍣"
        "🍱🥟🍤🍙🍚🍥🍢🍡🍦🥧🧁🍰🎂🍮🍭🍬🍫🍿🍩🍪🥜"
    ),
    "vehicles": ("🚗🚕🚙🚌🚎🏎🚓🚑🚒🚐🛻🚚🚛🚜🛵🏍🛺🚲🛴🚔🚍🚘🚖🚡🚠🚟🚃🚋🚞🚝🚄🚅🚈🚂🚆🚇🚊✈🛫🛬🛩🚁🛸🚀🛰⛵🚤🛥🛳⛴🚢🛶🛹"),
}


def find_font() -> str:
    for p in FONT_CANDIDATES:
        if Path(p).is_file():
            return p
    sys.exit(
        "error: Noto Color Emoji font not found (looked in: "
        + ", ".join(FONT_CANDIDATES)
        + ").\nInstall it with:  apt-get install fonts-noto-color-emoji"
    )


def render_glyph(font: ImageFont.FreeTypeFont, ch: str) -> Image.Image | None:
    """Render one emoji as a tightly cropped RGBA image (None if empty)."""
    canvas = Image.new("RGBA", (FONT_SIZE * 2, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 4, FONT_SIZE // 4), ch, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        return None
    return canvas.crop(bbox)


def load_glyphs(font_path: str) -> dict[str, list[tuple[str, Image.Image]]]:
    font = ImageFont.truetype(font_path, FONT_SIZE)
    # A private-use codepoint renders the font's "missing glyph", if any.
    notdef = render_glyph(font, "\ue000")
    notdef_bytes = notdef.tobytes() if notdef is not None else None
    out: dict[str, list[tuple[str, Image.Image]]] = {}
    for cls, chars in CLASSES.items():
        seen: set[str] = set()
        glyphs = []
        for ch in chars:
            if ch in seen:
                continue
            seen.add(ch)
            img = render_glyph(font, ch)
            if img is None or (notdef_bytes is not None and img.tobytes() == notdef_bytes):
                print(f"  skip {ch!r} (U+{ord(ch):04X}): does not render", file=sys.stderr)
                continue
            alpha = np.asarray(img.getchannel("A"))
            if (alpha > 32).mean() < 0.05:
                print(f"  skip {ch!r} (U+{ord(ch):04X}): nearly empty", file=sys.stderr)
                continue
            glyphs.append((ch, img))
        out[cls] = glyphs
    return out


def _smooth_field(nrng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (size, size, 3) by upsampling noise."""
    small = (nrng.random((cells, cells, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small, "RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def make_background(rng: random.Random, nrng: np.random.Generator, size: int) -> Image.Image:
    if rng.random() < 0.55:
        # Linear gradient between two random colours in a random direction.
        c0 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = c0 + (c1 - c0) * t[..., None]
    else:
        # Smooth coloured texture: coarse + fine random fields tinted by a base colour.
        base = np.array([rng.randint(30, 225) for _ in range(3)], dtype=np.float32)
        coarse = _smooth_field(nrng, size, rng.randint(2, 5))
        fine = _smooth_field(nrng, size, rng.randint(8, 24))
        amp_c = rng.uniform(40, 110)
        amp_f = rng.uniform(10, 45)
        arr = base + (coarse - 0.5) * amp_c * 2 + (fine - 0.5) * amp_f * 2
    arr = arr + nrng.normal(0.0, rng.uniform(2.0, 9.0), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_image(glyph: Image.Image, rng: random.Random, nrng: np.random.Generator, size: int) -> Image.Image:
    bg = make_background(rng, nrng, size)

    g = glyph.convert("RGBa")  # premultiplied alpha: no dark fringes when resampling
    if rng.random() < 0.5:
        g = g.transpose(Image.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.45, 0.95) * size / max(g.size)
    g = g.resize((max(1, round(g.width * scale)), max(1, round(g.height * scale))), Image.LANCZOS)
    g = g.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC, expand=True)
    g = g.convert("RGBA")

    # Random position; if the rotated glyph is larger than the frame, crop a little.
    x = rng.randint(min(0, size - g.width), max(0, size - g.width))
    y = rng.randint(min(0, size - g.height), max(0, size - g.height))
    bg.paste(g, (x, y), g)
    img = bg

    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.3)))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="sample_data/emoji3", help="output folder")
    ap.add_argument("--per-class", type=int, default=60, help="images per class")
    ap.add_argument("--size", type=int, default=160, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--glyphs", type=int, default=20, help="distinct emoji per class; each appears per-class/glyphs times in new scenes")
    ap.add_argument("--quality", type=int, default=88, help="JPEG quality")
    args = ap.parse_args(argv)

    font_path = find_font()
    glyphs = load_glyphs(font_path)
    out = Path(args.out)
    for ci, (cls, items) in enumerate(glyphs.items()):
        if not items:
            sys.exit(f"error: no glyph of class {cls!r} renders with {font_path}")
        d = out / cls
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob(f"{cls}_*.jpg"):
            old.unlink()
        # Shuffle the glyph order once per class (deterministically), then cycle.
        order = list(range(len(items)))
        random.Random(f"order-{args.seed}-{cls}").shuffle(order)
        order = order[: max(1, args.glyphs)]
        for i in range(args.per_class):
            rng = random.Random(f"{args.seed}-{cls}-{i}")
            nrng = np.random.default_rng([args.seed, ci, i])
            _, glyph = items[order[i % len(order)]]
            img = make_image(glyph, rng, nrng, args.size)
            img.save(d / f"{cls}_{i:03d}.jpg", "JPEG", quality=args.quality)
        used = min(args.per_class, len(order))
        print(f"{cls}: {args.per_class} images from {used} of {len(items)} glyphs -> {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Drawing scenes with PIL: aliased shapes and a built-in 5x5 pixel font, so images are identical on
every machine (no system fonts, no anti-aliasing, no encoder timestamps)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from adallava.data.world.scene import CELL, DEFAULT_LAYOUT, GRID, LAYOUTS, Layout, Scene, WorldObject

BACKGROUND = (24, 24, 24)
CARD = (250, 250, 250)
RGB = {
    "red": (230, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 240),
    "yellow": (240, 210, 40),
    "purple": (170, 70, 220),
}
LARGE = 14  # pixels: a large shape or a card fills its 16 px cell but for a 1 px margin
SMALL = 8
GLYPH_SCALE = 2  # 5x5 glyphs drawn as 10x10 on a 14x14 card
GLYPHS = {
    "B": ("####.", "#...#", "####.", "#...#", "####."),
    "E": ("#####", "#....", "####.", "#....", "#####"),
    "F": ("#####", "#....", "####.", "#....", "#...."),
    "H": ("#...#", "#...#", "#####", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "###..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#"),
    "P": ("####.", "#...#", "####.", "#....", "#...."),
    "R": ("####.", "#...#", "####.", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#.."),
}


def render(scene: Scene, layout: Layout = LAYOUTS[DEFAULT_LAYOUT]) -> Image.Image:
    """The scene as an RGB image of `layout.image_size` pixels (48 for v2, 96 for v3)."""
    image = Image.new("RGB", (layout.image_size, layout.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, layout.subcells)
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """PNG (lossless) or JPEG (quality 100, no chroma subsampling: what VQAv2/TextVQA file names
    require, within a few levels of the PNG). Both encoders are deterministic."""
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG")
    elif fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=100, subsampling=0)
    else:
        raise ValueError(f"fmt must be PNG or JPEG, got {fmt!r}")
    return buffer.getvalue()


def _draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject, subcells: int) -> None:
    size = SMALL if obj.size == "small" else LARGE
    margin = (CELL - size) // 2
    patch_col = (obj.cell % GRID) * subcells + obj.sub % subcells  # the patch the object is drawn in
    patch_row = (obj.cell // GRID) * subcells + obj.sub // subcells
    x0 = patch_col * CELL + margin + obj.dx
    y0 = patch_row * CELL + margin + obj.dy
    x1, y1 = x0 + size - 1, y0 + size - 1
    color = RGB[obj.color]
    if obj.letter is not None:
        draw.rectangle((x0, y0, x1, y1), fill=CARD)
        offset = (size - 5 * GLYPH_SCALE) // 2
        for r, line in enumerate(GLYPHS[obj.letter]):
            for c, pixel in enumerate(line):
                if pixel == "#":
                    px, py = x0 + offset + c * GLYPH_SCALE, y0 + offset + r * GLYPH_SCALE
                    draw.rectangle((px, py, px + GLYPH_SCALE - 1, py + GLYPH_SCALE - 1), fill=color)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif obj.shape == "triangle":
        draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=color)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")

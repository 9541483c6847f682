"""Scenes of the synthetic world: shapes and letter cards on a 3x3 grid, sampled from a seeded stream.

A scene is pure data (no pixels): `render.py` draws it, `questions.py` asks about it. Each object sits
in its own grid cell, and is drawn inside exactly one vision patch (16 px), so "where" is never
ambiguous: an object never straddles two patches, and position words name whole cells.

Two layouts (`LAYOUTS`): "v2" draws each cell as one patch (48 px images, 9 visual tokens); "v3"
draws each cell as 2 x 2 patches (96 px images, 36 visual tokens) and puts its object in one of the
four (`WorldObject.sub`), so most visual tokens are background, as in real images, and token selection
has something to prune. Questions see cells only; the patch inside the cell is like jitter.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

# ---- tables ---------------------------------------------------------------------------------------

GRID = 3
CELL = 16  # pixels per object slot = the vision patch size


@dataclass(frozen=True)
class Layout:
    """How scenes are drawn: each of the GRID x GRID cells is `subcells` x `subcells` patches."""

    name: str
    subcells: int

    @property
    def image_size(self) -> int:
        return GRID * self.subcells * CELL

    @property
    def patches(self) -> int:
        """Vision patches (visual tokens) per image."""
        return (GRID * self.subcells) ** 2


LAYOUTS = {"v2": Layout("v2", 1), "v3": Layout("v3", 2)}
DEFAULT_LAYOUT = "v3"  # the bundled models' world (issue 18); v2 is the world before it


def get_layout(name: str) -> Layout:
    """The layout called `name` (a ValueError lists the known ones)."""
    if name not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {name!r}")
    return LAYOUTS[name]


COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("square", "circle", "triangle")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
SIZES = ("small", "large")
# No "A" (VQA answer normalisation deletes the article "a"), no "I"/"O" (read as 1/0 or a circle).
LETTERS = ("B", "E", "F", "H", "K", "L", "N", "P", "R", "T")
ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "center", "right")
CELL_NAMES = (
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
)
# POPE's "objects": the 15 colour+shape categories (letter cards are not objects for POPE).
CATEGORIES = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)

# A skewed prior makes some categories "popular" (POPE's popular split needs frequency to vary), and a
# per-scene theme colour/shape makes categories that share a colour or a shape co-occur (its
# adversarial split needs co-occurrence statistics). Both are properties of the world, like COCO's.
COLOR_WEIGHTS = (0.30, 0.25, 0.20, 0.15, 0.10)
SHAPE_WEIGHTS = (0.45, 0.33, 0.22)
THEME_COLOR_P = 0.4
THEME_SHAPE_P = 0.3
SMALL_P = 0.3
SHAPE_COUNTS = (1, 2, 3, 4, 5)
LETTER_COUNT_WEIGHTS = (0.5, 0.35, 0.15)  # 0, 1, 2 letter cards
_COLOR_CUM = tuple(accumulate(COLOR_WEIGHTS))
_SHAPE_CUM = tuple(accumulate(SHAPE_WEIGHTS))

# A scene whose layout hashes into this bucket belongs to the test split, every other one to train:
# train and test are disjoint by construction, whatever the seeds.
TEST_BUCKETS = 8
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WorldObject:
    """One object: a shape (`shape` set) or a white letter card with a coloured letter (`letter` set).
    `dx`, `dy`: jitter in pixels inside its patch (the object never leaves it). `sub`: which patch of
    the cell (row-major) the object is drawn in, where a layout gives a cell several (v3)."""

    cell: int
    color: str
    shape: str | None = None
    letter: str | None = None
    size: str = "large"
    dx: int = 0
    dy: int = 0
    sub: int = 0

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def is_shape(self) -> bool:
        return self.shape is not None

    @property
    def category(self) -> str | None:
        """POPE category ("red square"); None for letter cards."""
        return f"{self.color} {self.shape}" if self.shape else None

    @property
    def phrase(self) -> str:
        """How captions and answers name it: "red square", or "red K" for a card with a red K."""
        return f"{self.color} {self.shape or self.letter}"

    def key(self) -> str:
        return f"{self.cell}:{self.color}:{self.shape or self.letter}:{self.size}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    """Sorted by cell (row-major): caption order."""

    @property
    def shapes(self) -> tuple[WorldObject, ...]:
        return tuple(o for o in self.objects if o.is_shape)

    @property
    def letters(self) -> tuple[WorldObject, ...]:
        return tuple(o for o in self.objects if not o.is_shape)

    def at(self, cell: int) -> WorldObject | None:
        for obj in self.objects:
            if obj.cell == cell:
                return obj
        return None

    def categories(self) -> frozenset[str]:
        return frozenset(o.category for o in self.shapes)  # type: ignore[misc]

    def key(self) -> str:
        """The layout without jitter (nor the patch inside a cell): two scenes with the same key look
        the same to every question."""
        return "|".join(o.key() for o in self.objects)

    def split(self) -> str:
        """ "test" or "train", from a stable hash of the layout."""
        digest = hashlib.blake2b(self.key().encode(), digest_size=8).digest()
        return "test" if int.from_bytes(digest, "little") % TEST_BUCKETS == 0 else "train"

    def to_json(self) -> list[list]:
        """Compact form for scenes.jsonl: [cell, color, shape or letter, size] per object, then `sub`
        where it is not 0."""
        return [
            [o.cell, o.color, o.shape or o.letter, o.size] + ([o.sub] if o.sub else []) for o in self.objects
        ]


def stream(seed: int, *names: object) -> random.Random:
    """An independent, reproducible random stream for (seed, names...): e.g. stream(0, "test", "pope").
    The split name is part of every stream, so train and test never share draws."""
    text = "/".join([str(seed), *map(str, names)])
    return random.Random(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))


def sample_scene(
    rng: random.Random,
    split: str,
    shape_counts: Sequence[int] = SHAPE_COUNTS,
    letter_counts: Sequence[int] = (0, 1, 2),
    max_tries: int = 1000,
    layout: Layout = LAYOUTS[DEFAULT_LAYOUT],
) -> Scene:
    """A scene of `split` (train/test) with a number of shapes from `shape_counts` and of letter cards
    from `letter_counts` (weighted by LETTER_COUNT_WEIGHTS). Scenes of the other split are redrawn.
    With several patches per cell (`layout`), each object's patch is drawn last, so v2 scenes are
    the same draws whatever layouts exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    letter_weights = [LETTER_COUNT_WEIGHTS[k] for k in letter_counts]
    for _ in range(max_tries):
        n_shapes = rng.choice(shape_counts)
        n_letters = rng.choices(letter_counts, weights=letter_weights)[0]
        scene = _draw(rng, n_shapes, n_letters)
        if scene.split() == split:
            return _place(rng, scene, layout)
    raise RuntimeError(f"no {split} scene in {max_tries} draws")  # probability ~ (7/8)^1000


def _draw(rng: random.Random, n_shapes: int, n_letters: int) -> Scene:
    cells = rng.sample(range(GRID * GRID), n_shapes + n_letters)
    theme_color = rng.choices(COLORS, cum_weights=_COLOR_CUM)[0]
    theme_shape = rng.choices(SHAPES, cum_weights=_SHAPE_CUM)[0]
    objects = []
    for cell in cells[:n_shapes]:
        color = (
            theme_color if rng.random() < THEME_COLOR_P else rng.choices(COLORS, cum_weights=_COLOR_CUM)[0]
        )
        shape = (
            theme_shape if rng.random() < THEME_SHAPE_P else rng.choices(SHAPES, cum_weights=_SHAPE_CUM)[0]
        )
        size = "small" if rng.random() < SMALL_P else "large"
        slack = 3 if size == "small" else 1
        objects.append(
            WorldObject(
                cell,
                color,
                shape=shape,
                size=size,
                dx=rng.randint(-slack, slack),
                dy=rng.randint(-slack, slack),
            )
        )
    # Letter cards of distinct colours and letters, so "the red letter" always names one card.
    colors = rng.sample(COLORS, n_letters)
    letters = rng.sample(LETTERS, n_letters)
    for cell, color, letter in zip(cells[n_shapes:], colors, letters, strict=True):
        objects.append(WorldObject(cell, color, letter=letter, dx=rng.randint(-1, 1), dy=rng.randint(-1, 1)))
    return Scene(tuple(sorted(objects, key=lambda o: o.cell)))


def _place(rng: random.Random, scene: Scene, layout: Layout) -> Scene:
    """Each object in one of its cell's patches, uniformly (nothing to draw with one patch per cell)."""
    slots = layout.subcells**2
    if slots == 1:
        return scene
    return Scene(tuple(replace(o, sub=rng.randrange(slots)) for o in scene.objects))


def scene_from_json(objects: list[list]) -> Scene:
    """Inverse of `Scene.to_json` (jitter is not stored, so it comes back as 0)."""
    built = []
    for cell, color, name, size, *sub in objects:
        where = {"sub": int(sub[0])} if sub else {}
        if name in SHAPES:
            built.append(WorldObject(int(cell), color, shape=name, size=size, **where))
        else:
            built.append(WorldObject(int(cell), color, letter=name, size=size, **where))
    return Scene(tuple(built))

"""Question families of the synthetic world, one per kind of question in the paper's benchmarks.

Each family turns a scene into a question and its answer, or None when the scene cannot support it
(the generator then draws another scene). Every answer is a word or two from the closed vocabulary
(`vocabulary.py`). Relations are defined on grid cells, so they are exact: X is "left of" Y when X's
column is smaller, "above" Y when its row is smaller; "the shape left of the triangle" is only asked
when exactly one shape qualifies.

`needs_depth` marks families that compose two or more lookups (bind colour and shape, follow a
relation from an anchor, count and compare, map an option text to its letter): these are the ones
a half-depth model is expected to lose (docs/world.md).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from adallava.data.world.scene import (
    CATEGORIES,
    CELL_NAMES,
    COLORS,
    PLURALS,
    SHAPE_COUNTS,
    SHAPES,
    Scene,
    WorldObject,
)
from adallava.inference.prompts import multiple_choice_prompt, short_answer_prompt

CAPTION_QUESTION = "List the objects in the image."
MME_SUFFIX = " Please answer yes or no."
SQA_SIZE_HINT = "Small shapes are light. Large shapes are heavy."
NOTHING = "nothing"
POPE_KINDS = ("random", "popular", "adversarial")
POPE_TOP_K = 3  # popular / adversarial negatives are drawn from the 3 best-ranked absent categories

RELATIONS: dict[str, Callable[[WorldObject, WorldObject], bool]] = {
    "left of": lambda a, b: a.col < b.col,
    "right of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
}


@dataclass(frozen=True)
class QA:
    """One question about one scene. `question` is the benchmark's bare question; `options` are the
    multiple-choice texts in display order (the answer is then a letter)."""

    family: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class CategoryStats:
    """POPE's statistics of a set of scenes: in how many images each category occurs, and each pair."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, scenes: Iterable[Scene]) -> CategoryStats:
        frequency: Counter[str] = Counter({c: 0 for c in CATEGORIES})
        pairs: Counter[tuple[str, str]] = Counter()
        for scene in scenes:
            present = sorted(scene.categories())
            frequency.update(present)
            pairs.update((a, b) for a in present for b in present if a != b)
        return cls(dict(frequency), dict(pairs))

    def popular(self, absent: Sequence[str]) -> list[str]:
        """Absent categories, most frequent first (ties in CATEGORIES order)."""
        return sorted(absent, key=lambda c: (-self.frequency.get(c, 0), CATEGORIES.index(c)))

    def adversarial(self, absent: Sequence[str], present: Iterable[str]) -> list[str]:
        """Absent categories, most co-occurring with the present ones first."""
        present = list(present)

        def score(c: str) -> int:
            return sum(self.cooccurrence.get((c, p), 0) for p in present)

        return sorted(absent, key=lambda c: (-score(c), CATEGORIES.index(c)))


# ---- prompts --------------------------------------------------------------------------------------


def prompt_for(benchmark: str, qa: QA) -> str:
    """The LLaVA-1.5 evaluation prompt of `benchmark` for this question (without <image>)."""
    if benchmark == "caption":
        return qa.question
    if benchmark == "scienceqa":
        return multiple_choice_prompt(qa.question, qa.options, qa.hint, context_label="Context: ")
    if benchmark == "mmbench":
        return multiple_choice_prompt(qa.question, qa.options, qa.hint)
    return short_answer_prompt(qa.question)


# ---- referring expressions ------------------------------------------------------------------------


def shape_refs(scene: Scene, obj: WorldObject) -> list[str]:
    """Ways to name a shape unambiguously among the scene's shapes ("the circle", "the red circle")."""
    refs = []
    if sum(o.shape == obj.shape for o in scene.shapes) == 1:
        refs.append(f"the {obj.shape}")
    if sum(o.category == obj.category for o in scene.shapes) == 1:
        refs.append(f"the {obj.color} {obj.shape}")
    return refs


def _ref(scene: Scene, obj: WorldObject, rng: random.Random) -> str | None:
    refs = shape_refs(scene, obj)
    return rng.choice(refs) if refs else None


def _count_phrase(k: int, shape: str) -> str:
    return (
        f"Is there 1 {shape} in this image?" if k == 1 else f"Are there {k} {PLURALS[shape]} in this image?"
    )


def _mc(answer: str, distractors: Sequence[str], n: int, rng: random.Random) -> tuple[tuple[str, ...], str]:
    """n options (answer + distinct distractors) in random order, and the answer's letter."""
    pool = [d for d in dict.fromkeys(distractors) if d != answer]
    options = [answer, *rng.sample(pool, min(n - 1, len(pool)))]
    rng.shuffle(options)
    return tuple(options), "ABCD"[options.index(answer)]


def _relation_targets(scene: Scene, anchor: WorldObject, relation: str) -> list[WorldObject]:
    return [o for o in scene.shapes if o is not anchor and RELATIONS[relation](o, anchor)]


def _unique_relation(scene: Scene, rng: random.Random) -> tuple[str, WorldObject, str, WorldObject] | None:
    """(relation, anchor, anchor reference, the one shape in that relation to the anchor), or None."""
    options = [(anchor, relation) for anchor in scene.shapes for relation in RELATIONS]
    rng.shuffle(options)
    for anchor, relation in options:
        ref = _ref(scene, anchor, rng)
        targets = _relation_targets(scene, anchor, relation)
        if ref is not None and len(targets) == 1:
            return relation, anchor, ref, targets[0]
    return None


# ---- caption --------------------------------------------------------------------------------------


def caption(scene: Scene, rng: random.Random) -> QA:
    return QA("caption", CAPTION_QUESTION, " ".join(o.phrase for o in scene.objects))


# ---- VQAv2-style short answers ---------------------------------------------------------------------


def vqa_color(scene: Scene, rng: random.Random) -> QA | None:
    unique = [o for o in scene.shapes if sum(p.shape == o.shape for p in scene.shapes) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    return QA("vqa_color", f"What color is the {obj.shape}?", obj.color)


def vqa_shape(scene: Scene, rng: random.Random) -> QA | None:
    unique = [o for o in scene.shapes if sum(p.color == o.color for p in scene.objects) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    return QA("vqa_shape", f"What shape is the {obj.color} object?", obj.shape)  # type: ignore[arg-type]


def _count_target(values: Sequence[str], universe: Sequence[str], rng: random.Random) -> str:
    """What to count: half the time the scene's most common value (so counts above 1 are common
    enough to learn), else a present value, else any value (answer 0)."""
    draw = rng.random()
    if draw < 0.5:
        ranked = Counter(values).most_common()
        return rng.choice([value for value, k in ranked if k == ranked[0][1]])
    return rng.choice(values) if draw < 0.8 else rng.choice(universe)


def vqa_count(scene: Scene, rng: random.Random) -> QA:
    if rng.random() < 0.5:
        shape = _count_target([o.shape for o in scene.shapes], SHAPES, rng)  # type: ignore[misc]
        count = sum(o.shape == shape for o in scene.shapes)
        return QA("vqa_count", f"How many {PLURALS[shape]} are there?", str(count))
    color = _count_target([o.color for o in scene.shapes], COLORS, rng)
    count = sum(o.color == color for o in scene.shapes)
    return QA("vqa_count", f"How many {color} shapes are there?", str(count))


def vqa_count_combo(scene: Scene, rng: random.Random) -> QA:
    category = _count_target([o.category for o in scene.shapes], CATEGORIES, rng)  # type: ignore[misc]
    color, shape = category.split()
    count = sum(o.category == category for o in scene.shapes)
    return QA("vqa_count_combo", f"How many {color} {PLURALS[shape]} are there?", str(count))


def vqa_position(scene: Scene, rng: random.Random) -> QA:
    occupied = [o.cell for o in scene.objects]
    empty = [c for c in range(len(CELL_NAMES)) if c not in occupied]
    cell = rng.choice(empty) if empty and rng.random() < 0.15 else rng.choice(occupied)
    obj = scene.at(cell)
    return QA("vqa_position", f"What is in the {CELL_NAMES[cell]}?", obj.phrase if obj else NOTHING)


def vqa_relation(scene: Scene, rng: random.Random) -> QA | None:
    found = _unique_relation(scene, rng)
    if found is None:
        return None
    relation, _, ref, target = found
    return QA("vqa_relation", f"What color is the shape {relation} {ref}?", target.color)


# ---- POPE ----------------------------------------------------------------------------------------


def pope_negative(scene: Scene, kind: str, stats: CategoryStats, rng: random.Random) -> str:
    """An absent category of the given POPE kind: uniform (random), among the most frequent absent
    ones (popular), or among those co-occurring most with the present ones (adversarial)."""
    present = scene.categories()
    absent = [c for c in CATEGORIES if c not in present]
    if kind == "random":
        return rng.choice(absent)
    if kind == "popular":
        return rng.choice(stats.popular(absent)[:POPE_TOP_K])
    if kind == "adversarial":
        return rng.choice(stats.adversarial(absent, present)[:POPE_TOP_K])
    raise ValueError(f"POPE kind must be one of {', '.join(POPE_KINDS)}, got {kind!r}")


def pope_question(category: str) -> str:
    return f"Is there a {category} in the image?"


def pope(scene: Scene, kind: str, stats: CategoryStats, rng: random.Random, want_yes: bool) -> QA:
    category = rng.choice(sorted(scene.categories())) if want_yes else pope_negative(scene, kind, stats, rng)
    return QA(f"pope_{kind}", pope_question(category), "yes" if want_yes else "no")


# ---- MME: yes/no in pairs (one Yes, one No per image) ---------------------------------------------


def mme_existence(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    present = sorted(scene.categories())
    if want_yes:
        category = rng.choice(present)
    else:
        absent = [c for c in CATEGORIES if c not in present]
        # Half of the negatives share a colour or a shape with a present object: binding matters.
        near = [c for c in absent if any(set(c.split()) & set(p.split()) for p in present)]
        category = rng.choice(near if near and rng.random() < 0.5 else absent)
    return _mme("mme_existence", f"Is there a {category} in this image?", want_yes)


def mme_count(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    shape = rng.choice(scene.shapes).shape
    count = sum(o.shape == shape for o in scene.shapes)
    if not want_yes:
        count = rng.choice([k for k in SHAPE_COUNTS if k != count])
    return _mme("mme_count", _count_phrase(count, shape), want_yes)  # type: ignore[arg-type]


def mme_color(scene: Scene, rng: random.Random, want_yes: bool) -> QA | None:
    unique = [o for o in scene.shapes if sum(p.shape == o.shape for p in scene.shapes) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    color = obj.color if want_yes else rng.choice([c for c in COLORS if c != obj.color])
    return _mme("mme_color", f"Is the {obj.shape} {color}?", want_yes)


def _mme(family: str, question: str, yes: bool) -> QA:
    return QA(family, question + MME_SUFFIX, "Yes" if yes else "No")


# ---- TextVQA: reading letter cards ------------------------------------------------------------------


def textvqa_read(scene: Scene, rng: random.Random) -> QA | None:
    if not scene.letters:
        return None
    card = rng.choice(scene.letters)
    if rng.random() < 0.5:
        question = f"What letter is in the {CELL_NAMES[card.cell]}?"
    elif len(scene.letters) == 1:
        question = "What letter is in the image?"
    else:
        question = f"What is the {card.color} letter?"
    return QA("textvqa_read", question, card.letter)  # type: ignore[arg-type]


# ---- ScienceQA-style multiple choice (a rule in the context, a fact in the image) ---------------


def sqa_size(scene: Scene, rng: random.Random) -> QA | None:
    """Is a named shape heavy or light: its size looked up in the image, turned into a weight by the
    rule in the context, and the option's letter found among two options in random order."""
    nameable = [o for o in scene.shapes if shape_refs(scene, o)]
    if not nameable:
        return None
    obj = rng.choice(nameable)
    answer = "heavy" if obj.size == "large" else "light"
    options, letter = _mc(answer, ("heavy", "light"), 2, rng)
    return QA("sqa_size", f"Is {_ref(scene, obj, rng)} heavy or light?", letter, options, SQA_SIZE_HINT)


# ---- MMBench-style multiple choice (four options) -------------------------------------------------


def mmb_attribute(scene: Scene, rng: random.Random) -> QA | None:
    unique = [o for o in scene.shapes if sum(p.shape == o.shape for p in scene.shapes) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    options, letter = _mc(obj.color, COLORS, 4, rng)
    return QA("mmb_attribute", f"What color is the {obj.shape}?", letter, options)


# ---- the registry ---------------------------------------------------------------------------------

Maker = Callable[[Scene, random.Random], "QA | None"]


@dataclass(frozen=True)
class Family:
    """A kind of question: which benchmark's format it is written in, its share of the training data,
    whether it composes several lookups (`needs_depth`), and which scenes it is drawn on."""

    name: str
    benchmark: str
    weight: float
    needs_depth: bool
    make: Maker
    letter_counts: tuple[int, ...] = (0, 1, 2)
    shape_counts: tuple[int, ...] = SHAPE_COUNTS


def _yes_no(maker: Callable[[Scene, random.Random, bool], QA | None]) -> Maker:
    """A training-time maker for a paired yes/no family: Yes or No with equal probability."""
    return lambda scene, rng: maker(scene, rng, rng.random() < 0.5)


def _needs_stats(name: str) -> Maker:
    """POPE families rank negatives by dataset statistics: they are made by `make_question`."""

    def make(scene: Scene, rng: random.Random) -> QA | None:
        raise ValueError(f"family {name} needs category statistics: use make_question(..., stats=...)")

    return make


LETTERED = (1, 2)
SEVERAL = (2, 3, 4, 5)

# Shares of the training data (sum 1). The caption task is LLaVA's stage-1 analogue: it grounds every
# object and its order on the grid, and the prototype only left the answer-prior plateau with it.
# The multiple-choice families get large shares: finding the option that holds the answer and copying
# its letter is one skill, learned once and shared. Left out, because the tiny model never learned
# them within the rebuild budget (docs/world.md): yes/no questions on the relation of two named
# shapes, MME position and OCR, and the harder multiple-choice families (localization, spatial,
# letters, a colour rule over every shape).
FAMILIES: tuple[Family, ...] = (
    Family("caption", "caption", 0.20, False, caption),
    Family("vqa_color", "vqav2", 0.05, False, vqa_color),
    Family("vqa_shape", "vqav2", 0.04, False, vqa_shape),
    Family("vqa_count", "vqav2", 0.07, False, vqa_count),
    Family("vqa_count_combo", "vqav2", 0.06, True, vqa_count_combo),
    Family("vqa_position", "vqav2", 0.06, False, vqa_position),
    Family("vqa_relation", "vqav2", 0.07, True, vqa_relation, shape_counts=SEVERAL),
    Family("pope_random", "pope", 0.03, False, _needs_stats("pope_random")),
    Family("pope_popular", "pope", 0.03, False, _needs_stats("pope_popular")),
    Family("pope_adversarial", "pope", 0.05, True, _needs_stats("pope_adversarial")),
    Family("mme_existence", "mme", 0.03, False, _yes_no(mme_existence)),
    Family("mme_count", "mme", 0.04, True, _yes_no(mme_count)),
    Family("mme_color", "mme", 0.03, False, _yes_no(mme_color)),
    Family("textvqa_read", "textvqa", 0.06, False, textvqa_read, letter_counts=LETTERED),
    Family("sqa_size", "scienceqa", 0.08, True, sqa_size),
    Family("mmb_attribute", "mmbench", 0.10, True, mmb_attribute),
)
FAMILY = {family.name: family for family in FAMILIES}
MME_SUBTASKS = {"existence": mme_existence, "count": mme_count, "color": mme_color}


def make_question(
    family: Family, scene: Scene, rng: random.Random, stats: CategoryStats | None = None
) -> QA | None:
    """One question of `family` on `scene` (None if the scene cannot support it). POPE families need
    `stats` (the negatives are ranked by them)."""
    if family.benchmark == "pope":
        if stats is None:
            raise ValueError(f"family {family.name} needs category statistics (stats=...)")
        return pope(scene, family.name.removeprefix("pope_"), stats, rng, rng.random() < 0.5)
    return family.make(scene, rng)

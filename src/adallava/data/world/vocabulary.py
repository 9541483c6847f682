"""The world's closed vocabulary: every word any question, prompt or answer can contain.

Words are split as the tiny model's tokenizer splits them (`tokenizers`' Whitespace pre-tokenizer:
runs of word characters, or runs of other non-space characters), so "circle?" is "circle" + "?".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from adallava.data.world.questions import (
    CAPTION_QUESTION,
    MME_SUFFIX,
    NOTHING,
    RELATIONS,
    SQA_SIZE_HINT,
)
from adallava.data.world.scene import CELL_NAMES, COLORS, LETTERS, PLURALS, SHAPE_COUNTS, SHAPES
from adallava.inference.prompts import LETTER_ANSWER, OPTION_LETTERS, SHORT_ANSWER

_WORD = re.compile(r"\w+|[^\w\s]+")

# The fixed text of every question template (placeholders filled by table words, listed below).
TEMPLATES = (
    CAPTION_QUESTION,
    "What color is the shape? What shape is the object? How many are there?",
    "What is in the? Is there a in the image? Is there 1 in this image? Are there",
    "What letter is in the image? What is the letter? Is the letter?",
    "Is the heavy or light?",
    "Context: A. B. C. D. E.",
    MME_SUFFIX,
    SQA_SIZE_HINT,
    SHORT_ANSWER,
    LETTER_ANSWER,
    "USER: ASSISTANT:",
)
ANSWERS = ("yes", "no", "Yes", "No", NOTHING, *OPTION_LETTERS)


def words(text: str) -> list[str]:
    """`text` split into vocabulary words, as the tokenizer splits it."""
    return _WORD.findall(text)


def world_vocabulary() -> list[str]:
    """Every word of the world, sorted. Closed: a generated question or answer has no other word."""
    pieces: Iterable[str] = (
        *TEMPLATES,
        *ANSWERS,
        *COLORS,
        *SHAPES,
        *PLURALS.values(),
        *LETTERS,
        *CELL_NAMES,
        *RELATIONS,
        *(str(k) for k in range(max(SHAPE_COUNTS) + 1)),
    )
    return sorted({word for piece in pieces for word in words(piece)})

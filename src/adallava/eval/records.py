"""Typed benchmark records. Every reader returns a list of one `Sample` subclass: the question id,
the image (a path, or encoded image bytes that PIL can open), the prompt and the ground-truth
answer(s), plus the benchmark's own metadata as typed fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QuestionId = int | str


@dataclass(frozen=True)
class Sample:
    question_id: QuestionId
    image: Path | bytes | None
    """Image file path, or encoded bytes (MMBench's base64 images, decoded); None for text-only."""
    prompt: str
    """LLaVA-1.5 prompt text (see `prompts.py`), without the <image> token or chat template."""
    answers: tuple[str, ...]
    """Ground truth: 10 human answers (VQAv2, TextVQA), "yes"/"no" (POPE), "Yes"/"No" (MME), a letter
    (ScienceQA, MMBench); empty when the split has no public answers."""


@dataclass(frozen=True)
class VQAv2Sample(Sample):
    question: str
    image_id: int
    answer_type: str
    question_type: str


@dataclass(frozen=True)
class TextVQASample(Sample):
    question: str
    image_id: str


@dataclass(frozen=True)
class POPESample(Sample):
    question: str
    category: str
    """"random", "popular" or "adversarial" (the coco_pope_<category>.json file it comes from)."""


@dataclass(frozen=True)
class MMESample(Sample):
    question: str
    """The question as in the MME txt files, ending in "Please answer yes or no."."""
    subtask: str


@dataclass(frozen=True)
class ScienceQASample(Sample):
    question: str
    hint: str
    choices: tuple[str, ...]
    answer_index: int
    subject: str
    grade: str


@dataclass(frozen=True)
class MMBenchSample(Sample):
    question: str
    hint: str
    options: tuple[str, ...]
    """Option texts in display order (2-4 of A-D); rotated when `rotation` > 0."""
    category: str
    l2_category: str
    rotation: int = 0
    """Circular-evaluation round: options shifted left by this many places (LLaVA's --all-rounds)."""

    @property
    def main_index(self) -> int:
        """The question this row belongs to: circular copies in the TSV carry index + k * 1e6."""
        return int(self.question_id) % 1_000_000


@dataclass(frozen=True)
class QuestionSample(Sample):
    """A line of a LLaVA eval question file (question_id, image, text, category)."""

    category: str


@dataclass(frozen=True)
class LlavaAnswer:
    """A line of a LLaVA answers file (model_vqa*.py output)."""

    question_id: QuestionId
    text: str
    prompt: str | None
    round_id: int
    where: str
    """"FILE, line N", for error messages."""

"""LLaVA's eval file formats: question files (jsonl: question_id, image, text, category), answers files
(jsonl: question_id, text, prompt, optional round_id) and VQA results JSON ([{question_id, answer}])."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from adallava.eval.readers._files import (
    element,
    field,
    iter_jsonl,
    json_list,
    load_json,
    optional_field,
    reject_duplicate,
)
from adallava.eval.records import LlavaAnswer, QuestionId, QuestionSample


def read_llava_questions(path: str | Path, image_dir: str | Path | None = None) -> list[QuestionSample]:
    """A LLaVA eval question file; `image` is joined to `image_dir` when given. No answers."""
    samples, seen = [], {}
    for where, item in iter_jsonl(path):
        question_id = field(item, "question_id", (int, str), where)
        reject_duplicate(seen, question_id, where)
        image = optional_field(item, "image", str, where)
        samples.append(
            QuestionSample(
                question_id=question_id,
                image=None if image is None else _join(image_dir, image),
                prompt=field(item, "text", str, where),
                answers=(),
                category=optional_field(item, "category", str, where) or "",
            )
        )
    return samples


def read_llava_answers(path: str | Path) -> list[LlavaAnswer]:
    """A LLaVA answers file, in file order. Duplicates are not checked here (TextVQA's answers repeat
    question ids); `answers_by_id` checks them where ids must be unique."""
    answers = []
    for where, item in iter_jsonl(path):
        round_id = optional_field(item, "round_id", int, where) or 0
        if round_id < 0:
            raise ValueError(f"{where}: field 'round_id' must be >= 0, got {round_id}")
        answers.append(
            LlavaAnswer(
                question_id=field(item, "question_id", (int, str), where),
                text=field(item, "text", str, where),
                prompt=optional_field(item, "prompt", str, where),
                round_id=round_id,
                where=where,
            )
        )
    return answers


def answers_by_id(answers: Iterable[LlavaAnswer]) -> dict[QuestionId, str]:
    """question_id -> text for files with one answer per question; a repeated id is a ValueError."""
    texts: dict[QuestionId, str] = {}
    seen: dict[QuestionId, str] = {}
    for answer in answers:
        reject_duplicate(seen, answer.question_id, answer.where)
        texts[answer.question_id] = answer.text
    return texts


def answers_by_round(answers: Iterable[LlavaAnswer]) -> dict[tuple[QuestionId, int], str]:
    """(question_id, round_id) -> text, for MMBench's circular rounds; repeats are a ValueError."""
    texts: dict[tuple[QuestionId, int], str] = {}
    seen: dict[tuple[QuestionId, int], str] = {}
    for answer in answers:
        key = (answer.question_id, answer.round_id)
        reject_duplicate(seen, key, answer.where, what="(question_id, round_id)")
        texts[key] = answer.text
    return texts


def read_vqa_results(path: str | Path) -> dict[int, str]:
    """The VQA results JSON ([{"question_id": int, "answer": str}, ...]) -> {question_id: answer}."""
    path = Path(path)
    items = json_list(load_json(path), None, path)
    results: dict[int, str] = {}
    seen: dict[int, str] = {}
    for index in range(len(items)):
        where, item = element(items, index, path, None)
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        results[question_id] = field(item, "answer", str, where)
    return results


def _join(image_dir: str | Path | None, name: str) -> Path:
    return Path(name) if image_dir is None else Path(image_dir) / name

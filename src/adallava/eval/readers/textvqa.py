"""TextVQA in its official format (TextVQA_0.5.1_<split>.json: {"data": [{question_id, question,
image_id, answers, ...}]}) and the matching of LLaVA answers files to it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from adallava.eval.readers._files import (
    element,
    field,
    json_list,
    load_json,
    optional_field,
    reject_duplicate,
)
from adallava.eval.records import LlavaAnswer, TextVQASample
from adallava.inference.prompts import short_answer_prompt

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def read_textvqa(annotations: str | Path, image_dir: str | Path | None = None) -> list[TextVQASample]:
    """Samples in file order; images are <image_id>.jpg (joined to `image_dir` when given). The prompt
    carries "Reference OCR token: ..." when the entry has `ocr_tokens`, as LLaVA-1.5's question file
    does."""
    path = Path(annotations)
    items = json_list(load_json(path), "data", path)
    samples, seen = [], {}
    for index in range(len(items)):
        where, item = element(items, index, path, "data")
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        question = field(item, "question", str, where)
        image_id = field(item, "image_id", str, where)
        answers = _strings(item, "answers", where)
        ocr_tokens = _strings(item, "ocr_tokens", where)
        name = f"{image_id}.jpg"
        samples.append(
            TextVQASample(
                question_id=question_id,
                image=Path(name) if image_dir is None else Path(image_dir) / name,
                prompt=short_answer_prompt(question, ocr_tokens),
                answers=answers,
                question=question,
                image_id=image_id,
            )
        )
    return samples


def question_from_llava_prompt(prompt: str, where: str) -> str:
    """The lowercased question inside a LLaVA TextVQA prompt (llava/eval/eval_textvqa.py,
    prompt_processor): after "OCR tokens: ... Question: Q Short answer:", or the line that is not
    "Reference OCR token: ..." in a 3-line prompt, or the first line of a 2-line prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ValueError(f"{where}: field 'prompt' starts with 'OCR tokens: ' but has no 'Question: ...'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"{where}: field 'prompt' is not in a LLaVA TextVQA prompt layout: {prompt!r}")
    return question.lower()


def textvqa_predictions(samples: Sequence[TextVQASample], answers: Sequence[LlavaAnswer]) -> dict[int, str]:
    """question_id -> prediction text.

    An answer whose question_id is a TextVQA question id (int) matches directly. Otherwise it is
    matched as llava/eval/eval_textvqa.py does: its question_id is the image id and the question is
    read from its prompt, against (image_id, question.lower()) of the annotations. Annotations that
    share that key are taken in file order.
    """
    by_id = {sample.question_id: sample for sample in samples}
    by_key: dict[tuple[str, str], list[int]] = {}
    for sample in samples:
        by_key.setdefault((sample.image_id, sample.question.lower()), []).append(int(sample.question_id))
    predictions: dict[int, str] = {}
    seen: dict[int, str] = {}
    for answer in answers:
        if isinstance(answer.question_id, int) and answer.question_id in by_id:
            question_id = answer.question_id
        else:
            if answer.prompt is None:
                raise ValueError(
                    f"{answer.where}: question_id {answer.question_id!r} is not a TextVQA question id, "
                    "and there is no 'prompt' field to match it by image id and question"
                )
            key = (str(answer.question_id), question_from_llava_prompt(answer.prompt, answer.where))
            candidates = by_key.get(key)
            if not candidates:
                raise ValueError(
                    f"{answer.where}: no annotation has image_id {key[0]!r} and question {key[1]!r}"
                )
            question_id = candidates.pop(0) if len(candidates) > 1 else candidates[0]
        reject_duplicate(seen, question_id, answer.where)
        predictions[question_id] = answer.text
    return predictions


def _strings(item: dict, name: str, where: str) -> tuple[str, ...]:
    values = optional_field(item, name, list, where) or []
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{where}: field '{name}[{position}]' must be str, got {value!r}")
    return tuple(values)

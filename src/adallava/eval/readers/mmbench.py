"""MMBench in its official TSV format: columns index, question, hint, A-D, answer, category,
l2-category, image (base64), ... Only index, question, A and B are required, and `image` when images
are asked for: scoring reads none, so a TSV without the large image column (or without `comment`)
scores. Rows with index >= 1,000,000 are circular copies of row index % 1,000,000 (VLMEvalKit
layout); an image cell of at most 64 digits points at another row's image. Circular evaluation can
also come from rotating the options of each row, which `mmbench_rotations` does (LLaVA's
model_vqa_mmbench.py --all-rounds)."""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from dataclasses import replace
from pathlib import Path

from adallava.eval.records import MMBenchSample
from adallava.inference.prompts import OPTION_LETTERS, multiple_choice_prompt

REQUIRED_COLUMNS = ("index", "question", "A", "B")
IMAGE_COLUMN = "image"
# LLaVA reads the TSV with pandas.read_table, whose default NA strings make a cell empty; LLaVA's
# is_none also treats "nan" and "none" in any case as empty (llava/eval/model_vqa_mmbench.py).
NA_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"}
    | {"N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
_MAX_IMAGE_REFERENCE = 64


def read_mmbench(path: str | Path, images: bool | None = None) -> list[MMBenchSample]:
    """Every row in file order, `answers` = (letter,) where the TSV has answers (dev), else ().

    `images`: True requires the `image` column and decodes it to bytes; False never reads it (`image`
    is None: scoring needs no images, as MMBench's evaluator reads only index, question, options,
    answer and categories); None decodes it when the TSV has the column. Columns other than index,
    question, A, B (and image when required) are optional; `comment`, `source`, `split` are not read.
    """
    path = Path(path)
    header, rows = _rows(path, REQUIRED_COLUMNS + ((IMAGE_COLUMN,) if images else ()))
    samples: list[MMBenchSample] = []
    seen: dict[int, str] = {}
    for where, row in rows:
        if None in row:
            raise ValueError(f"{where}: more tab-separated fields than the header has columns")
        index = _index(row, where)
        if index in seen:
            raise ValueError(f"{where}: duplicate index {index} (first seen at {seen[index]})")
        seen[index] = where
        samples.append(_sample(row, where, index))
    if images is False or IMAGE_COLUMN not in header:
        return samples
    decoded = _images(rows)
    return [replace(sample, image=decoded[int(sample.question_id)]) for sample in samples]


def _images(rows: list[tuple[str, dict[str, str | None]]]) -> dict[int, bytes]:
    """index -> decoded image; a cell of at most 64 digits refers to that row index's image."""
    images: dict[int, bytes] = {}
    references: list[tuple[int, str, str]] = []
    for where, row in rows:
        index = _index(row, where)
        cell = _cell(row, IMAGE_COLUMN)
        if cell is None:
            raise ValueError(f"{where}: field 'image' is empty")
        if cell.isdigit() and len(cell) <= _MAX_IMAGE_REFERENCE:
            references.append((index, cell, where))
        else:
            images[index] = _decode(cell, where)
    for index, target, where in references:
        if int(target) not in images:
            raise ValueError(f"{where}: field 'image' refers to row index {target}, which has no image")
        images[index] = images[int(target)]
    return images


def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[str, dict[str, str | None]]]]:
    """(header, [(where, row)] for every row) of the TSV, the header checked for `required`."""
    csv.field_size_limit(sys.maxsize)  # base64 images exceed csv's 128 KiB default
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = list(reader.fieldnames or [])
        missing = [column for column in required if column not in header]
        if missing:
            raise ValueError(
                f"{path}, line 1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})"
            )
        rows = []
        for row in reader:
            rows.append((f"{path}, line {reader.line_num}", row))
    return header, rows


def _sample(row: dict[str, str | None], where: str, index: int) -> MMBenchSample:
    """One row as a sample (its image filled in later)."""
    options = _options(row, where)
    answer = _cell(row, "answer")
    letters = OPTION_LETTERS[: len(options)]
    if answer is not None and answer not in letters:
        raise ValueError(f"{where}: field 'answer' must be one of {', '.join(letters)}, got {answer!r}")
    question = _cell(row, "question")
    if question is None:
        raise ValueError(f"{where}: field 'question' is empty")
    hint = _cell(row, "hint") or ""
    return MMBenchSample(
        question_id=index,
        image=None,
        prompt=multiple_choice_prompt(question, options, hint),
        answers=() if answer is None else (answer,),
        question=question,
        hint=hint,
        options=options,
        category=_cell(row, "category") or "",
        l2_category=_cell(row, "l2-category") or "",
    )


def rotate_mmbench(sample: MMBenchSample, rotation: int) -> MMBenchSample:
    """The sample with options shifted left by `rotation` places (round `rotation` of LLaVA's
    --all-rounds): options [a, b, c, d] in round 1 are shown as A. b, B. c, C. d, D. a, and the
    answer letter moves with its option."""
    n = len(sample.options)
    if not 0 <= rotation < n:
        raise ValueError(f"rotation must be in 0..{n - 1} for {n} options, got {rotation}")
    options = sample.options[rotation:] + sample.options[:rotation]
    answers = sample.answers
    if answers:
        answers = (OPTION_LETTERS[(OPTION_LETTERS.index(answers[0]) - rotation) % n],)
    return replace(
        sample,
        options=options,
        answers=answers,
        prompt=multiple_choice_prompt(sample.question, options, sample.hint),
        rotation=(sample.rotation + rotation) % n,
    )


def mmbench_rotations(sample: MMBenchSample) -> list[MMBenchSample]:
    """All len(options) rotations of a sample, round 0 first."""
    return [rotate_mmbench(sample, rotation) for rotation in range(len(sample.options))]


def _cell(row: dict[str, str | None], column: str) -> str | None:
    value = row.get(column)
    if value is None or value in NA_VALUES or value.lower() in ("nan", "none"):
        return None
    return value


def _index(row: dict[str, str | None], where: str) -> int:
    value = _cell(row, "index")
    try:
        index = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'index' must be an integer, got {row.get('index')!r}") from None
    if index < 0:
        raise ValueError(f"{where}: field 'index' must be >= 0, got {index}")
    return index


def _options(row: dict[str, str | None], where: str) -> tuple[str, ...]:
    # As LLaVA's get_options: A, B, ... up to the first empty cell.
    options = []
    for letter in "ABCD":
        value = _cell(row, letter)
        if value is None:
            break
        options.append(value)
    if len(options) < 2:
        raise ValueError(f"{where}: fields 'A' and 'B' must hold options (found {len(options)} option(s))")
    return tuple(options)


def _decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{where}: field 'image' is not base64 ({error})") from None

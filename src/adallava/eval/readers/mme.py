"""MME in its official layouts.

* The benchmark (MME_Benchmark_release_version/<subtask>/): either `images/` beside
  `questions_answers_YN/`, or images and txt files side by side. Each <image stem>.txt holds two
  lines "question<TAB>Yes|No".
* Results for the official eval tool (eval_tool/calculation.py --results_dir D): one D/<subtask>.txt
  per subtask, lines "image<TAB>question<TAB>ground truth<TAB>prediction", two consecutive lines per
  image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from adallava.eval.records import MMESample, QuestionId
from adallava.inference.prompts import short_answer_prompt

# eval_tool/calculation.py, eval_type_dict.
PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


@dataclass(frozen=True)
class MMEResult:
    """One line of an official MME results file."""

    subtask: str
    image: str
    question: str
    answer: str
    prediction: str
    where: str


def read_mme(root: str | Path) -> list[MMESample]:
    """Every question of every subtask folder under `root`, sorted by subtask then image name. Ids are
    "<subtask>/<image file>#<1|2>": LLaVA's llava_mme.jsonl uses "<subtask>/<image file>" for both
    questions of an image, which is not unique."""
    root = Path(root)
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not folders:
        raise ValueError(f"{root}: no MME subtask folders (expected e.g. {root}/existence/)")
    samples = []
    for folder in folders:
        if (folder / "images").is_dir():
            image_dir, qa_dir = folder / "images", folder / "questions_answers_YN"
            if not qa_dir.is_dir():
                raise ValueError(f"{folder}: has images/ but no questions_answers_YN/")
        else:
            image_dir = qa_dir = folder
        for txt in sorted(qa_dir.glob("*.txt")):
            image = _image_for(txt, image_dir)
            for k, (question, answer) in enumerate(_question_lines(txt), start=1):
                samples.append(
                    MMESample(
                        question_id=f"{folder.name}/{image.name}#{k}",
                        image=image,
                        prompt=short_answer_prompt(question),
                        answers=(answer,),
                        question=question,
                        subtask=folder.name,
                    )
                )
    return samples


def read_mme_results(results_dir: str | Path) -> list[MMEResult]:
    """All <subtask>.txt files of a results folder, in file order. Subtasks without a file are left
    out (the scorer reports them); a txt file that is not an MME subtask is an error."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: not a folder of MME results (<subtask>.txt files)")
    rows = []
    for path in sorted(results_dir.glob("*.txt")):
        if path.stem not in SUBTASKS:
            raise ValueError(
                f"{path}: '{path.stem}' is not an MME subtask (expected one of {', '.join(SUBTASKS)})"
            )
        rows.extend(_result_lines(path))
    if not rows:
        raise ValueError(f"{results_dir}: no MME results (<subtask>.txt files with lines)")
    return rows


def mme_results(samples: Sequence[MMESample], predictions: Mapping[QuestionId, str]) -> list[MMEResult]:
    """Result rows for `write_mme_results`, in sample order (the two questions of an image adjacent,
    as `read_mme` returns them); a sample without a prediction is a ValueError."""
    rows = []
    for sample in samples:
        if sample.question_id not in predictions:
            raise ValueError(f"no prediction for MME question {sample.question_id!r}")
        image = sample.image.name if isinstance(sample.image, Path) else str(sample.question_id)
        rows.append(
            MMEResult(
                sample.subtask,
                image,
                sample.question,
                sample.answers[0],
                predictions[sample.question_id],
                str(sample.question_id),
            )
        )
    return rows


def write_mme_results(rows: Sequence[MMEResult], results_dir: str | Path) -> list[Path]:
    """Write the official results files; tabs and newlines inside a prediction become spaces (the
    format has one line per question)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    by_subtask: dict[str, list[str]] = {}
    for row in rows:
        prediction = row.prediction.replace("\t", " ").replace("\r", " ").replace("\n", " ")
        by_subtask.setdefault(row.subtask, []).append(
            f"{row.image}\t{row.question}\t{row.answer}\t{prediction}\n"
        )
    paths = []
    for subtask, lines in by_subtask.items():
        path = results_dir / f"{subtask}.txt"
        path.write_text("".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


def _image_for(txt: Path, image_dir: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / (txt.stem + suffix)
        if candidate.is_file():
            return candidate
    raise ValueError(f"{txt}: no image {txt.stem}.jpg/.png in {image_dir}")


def _question_lines(path: Path) -> list[tuple[str, str]]:
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        parts = line.strip().split("\t")
        if len(parts) != 2:
            raise ValueError(
                f"{where}: expected 'question<TAB>answer', got {len(parts)} tab-separated fields"
            )
        question, answer = parts
        if answer.lower() not in ("yes", "no"):
            raise ValueError(f"{where}: field 'answer' must be Yes or No, got {answer!r}")
        lines.append((question, answer))
    return lines


def _result_lines(path: Path) -> list[MMEResult]:
    rows: list[MMEResult] = []
    # read_text translates "\r\n" and "\r" to "\n", as the official tool's readlines does.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError(
                f"{where}: expected 'image<TAB>question<TAB>ground truth<TAB>prediction', "
                f"got {len(parts)} tab-separated fields"
            )
        image, question, answer, prediction = parts
        if answer.lower() not in ("yes", "no"):
            raise ValueError(f"{where}: field 'ground truth' must be yes or no, got {answer!r}")
        if len(rows) % 2 == 1 and rows[-1].image != image:
            raise ValueError(
                f"{where}: lines pair up per image (two questions each), but this line's image {image!r} "
                f"differs from the previous line's {rows[-1].image!r}"
            )
        rows.append(MMEResult(path.stem, image, question, answer, prediction, where))
    if len(rows) % 2:
        raise ValueError(
            f"{path}: {len(rows)} lines; MME has two questions per image, so the count must be even"
        )
    return rows

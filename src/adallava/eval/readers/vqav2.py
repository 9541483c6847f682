"""VQAv2 in its official format: the questions JSON (v2_OpenEnded_mscoco_<subtype>_questions.json)
and, for splits that have them, the annotations JSON (v2_mscoco_<subtype>_annotations.json)."""

from __future__ import annotations

from pathlib import Path

from adallava.eval.readers._files import element, field, json_list, load_json, reject_duplicate
from adallava.eval.records import VQAv2Sample
from adallava.inference.prompts import short_answer_prompt


def read_vqav2(
    questions: str | Path, annotations: str | Path | None = None, image_dir: str | Path | None = None
) -> list[VQAv2Sample]:
    """Samples in questions-file order. With annotations, only annotated questions are returned (the
    official evaluation scores the annotation file's question ids) and each has its 10 raw answers.

    Images are COCO_<data_subtype>_<image_id:012d>.jpg, joined to `image_dir` when given.
    """
    questions = Path(questions)
    data = load_json(questions)
    items = json_list(data, "questions", questions)
    subtype = field(data, "data_subtype", str, str(questions))
    annotated = _read_annotations(Path(annotations)) if annotations is not None else None

    samples, seen = [], {}
    for index in range(len(items)):
        where, item = element(items, index, questions, "questions")
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        image_id = field(item, "image_id", int, where)
        question = field(item, "question", str, where)
        if annotated is not None and question_id not in annotated:
            continue
        answers, answer_type, question_type = (
            annotated.pop(question_id) if annotated is not None else ((), "", "")
        )
        name = f"COCO_{subtype}_{image_id:012d}.jpg"
        samples.append(
            VQAv2Sample(
                question_id=question_id,
                image=Path(name) if image_dir is None else Path(image_dir) / name,
                prompt=short_answer_prompt(question),
                answers=answers,
                question=question,
                image_id=image_id,
                answer_type=answer_type,
                question_type=question_type,
            )
        )
    if annotated:
        first = next(iter(annotated))
        raise ValueError(
            f"{annotations}: {len(annotated)} annotated question ids are not in {questions} "
            f"(e.g. question_id {first}); are the two files from the same split?"
        )
    return samples


def _read_annotations(path: Path) -> dict[int, tuple[tuple[str, ...], str, str]]:
    items = json_list(load_json(path), "annotations", path)
    annotated: dict[int, tuple[tuple[str, ...], str, str]] = {}
    seen: dict[int, str] = {}
    for index in range(len(items)):
        where, item = element(items, index, path, "annotations")
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        raw = field(item, "answers", list, where)
        if not raw:
            raise ValueError(f"{where}: field 'answers' is empty")
        answers = []
        for position, answer in enumerate(raw):
            if not isinstance(answer, dict):
                raise ValueError(f"{where}: field 'answers[{position}]' must be an object")
            answers.append(field(answer, "answer", str, f"{where}.answers[{position}]"))
        annotated[question_id] = (
            tuple(answers),
            field(item, "answer_type", str, where),
            field(item, "question_type", str, where),
        )
    return annotated

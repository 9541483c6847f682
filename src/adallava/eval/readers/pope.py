"""POPE in its official format: coco_pope_<category>.json files (one JSON object per line:
question_id, image, text, label) for the random / popular / adversarial splits, and LLaVA's
question file that concatenates them (question_id, image, text, category)."""

from __future__ import annotations

from pathlib import Path

from adallava.eval.readers._files import field, iter_jsonl, reject_duplicate
from adallava.eval.records import POPESample
from adallava.inference.prompts import short_answer_prompt

ANNOTATION_PREFIX = "coco_pope_"
LABELS = ("yes", "no")


def read_pope_annotations(
    path: str | Path, category: str | None = None, image_dir: str | Path | None = None
) -> list[POPESample]:
    """One coco_pope_<category>.json file; the category defaults to the part of the file name after
    "coco_pope_" (as llava/eval/eval_pope.py reads it)."""
    path = Path(path)
    if category is None:
        category = _category_of(path)
    samples, seen = [], {}
    for where, item in iter_jsonl(path):
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        label = field(item, "label", str, where)
        if label not in LABELS:
            raise ValueError(f"{where}: field 'label' must be 'yes' or 'no', got {label!r}")
        text = field(item, "text", str, where)
        image = field(item, "image", str, where)
        samples.append(
            POPESample(
                question_id=question_id,
                image=Path(image) if image_dir is None else Path(image_dir) / image,
                prompt=short_answer_prompt(text),
                answers=(label,),
                question=text,
                category=category,
            )
        )
    return samples


def read_pope(
    questions: str | Path, annotation_dir: str | Path, image_dir: str | Path | None = None
) -> list[POPESample]:
    """LLaVA's POPE layout: a question file (question_id, image, text, category) whose questions of
    each category are, in order, the lines of annotation_dir/coco_pope_<category>.json. Labels come
    from those files by position, as in llava/eval/eval_pope.py; the image names must agree."""
    questions, annotation_dir = Path(questions), Path(annotation_dir)
    files = sorted(annotation_dir.glob(f"{ANNOTATION_PREFIX}*.json"))
    if not files:
        raise ValueError(f"{annotation_dir}: no {ANNOTATION_PREFIX}<category>.json annotation files")
    labelled = {_category_of(file): read_pope_annotations(file) for file in files}
    files_of = {_category_of(file): file for file in files}
    position = dict.fromkeys(labelled, 0)

    samples, seen = [], {}
    for where, item in iter_jsonl(questions):
        question_id = field(item, "question_id", int, where)
        reject_duplicate(seen, question_id, where)
        category = field(item, "category", str, where)
        if category not in labelled:
            raise ValueError(
                f"{where}: field 'category' is {category!r}, which has no {ANNOTATION_PREFIX}{category}.json "
                f"in {annotation_dir} (found: {', '.join(sorted(labelled))})"
            )
        image = field(item, "image", str, where)
        text = field(item, "text", str, where)
        index = position[category]
        if index >= len(labelled[category]):
            raise ValueError(
                f"{where}: more '{category}' questions than lines in {files_of[category]} "
                f"({len(labelled[category])})"
            )
        reference = labelled[category][index]
        if Path(image).name != Path(reference.image).name:
            raise ValueError(
                f"{where}: field 'image' is {image!r}, but question {index + 1} of {files_of[category]} "
                f"is about {Path(reference.image).name!r}; the question file and annotations are out of order"
            )
        position[category] = index + 1
        samples.append(
            POPESample(
                question_id=question_id,
                image=Path(image) if image_dir is None else Path(image_dir) / image,
                prompt=text,
                answers=reference.answers,
                question=reference.question,
                category=category,
            )
        )
    for category, count in position.items():
        if 0 < count < len(labelled[category]):
            raise ValueError(
                f"{questions}: only {count} '{category}' questions, but {files_of[category]} has "
                f"{len(labelled[category])} lines"
            )
    return samples


def _category_of(path: Path) -> str:
    name = path.name
    if not (name.startswith(ANNOTATION_PREFIX) and name.endswith(".json")):
        raise ValueError(f"{path}: POPE annotation files are named {ANNOTATION_PREFIX}<category>.json")
    return name[len(ANNOTATION_PREFIX) : -len(".json")]

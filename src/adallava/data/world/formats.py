"""Writers of the world's files in the formats the real data come in: LLaVA's conversation JSON for
training (as llava_v1_5_mix665k.json), and each benchmark's official evaluation files, exactly as
`adallava.eval.readers` reads them. Paths in the files are relative, as in the originals."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adallava.data.world.questions import QA

VQAV2_SUBTYPE = "world"
VQAV2_QUESTIONS = f"v2_OpenEnded_mscoco_{VQAV2_SUBTYPE}_questions.json"
VQAV2_ANNOTATIONS = f"v2_mscoco_{VQAV2_SUBTYPE}_annotations.json"
VQAV2_IMAGE = "COCO_" + VQAV2_SUBTYPE + "_{k:012d}.jpg"  # k: the image id (= the question id here)
POPE_QUESTIONS = "llava_pope_test.jsonl"
MME_ROOT = "MME_Benchmark_release_version"
TEXTVQA_FILE = "TextVQA_0.5.1_val.json"
MMBENCH_FILE = "mmbench_dev_world.tsv"
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category")
MMBENCH_COLUMNS += ("source", "l2-category", "comment", "split", "image")
MMBENCH_CATEGORIES = {
    "mmb_attribute": ("attribute_recognition", "finegrained_perception (instance-level)"),
}
HUMAN_ANSWERS = 10  # VQAv2 and TextVQA have 10 human answers per question; ours agree


@dataclass(frozen=True)
class Question:
    """One evaluation question on one image. `image`: path relative to the benchmark folder;
    `question_id`: the benchmark's own id."""

    question_id: int | str
    image: str
    qa: QA


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def llava_conversation(sample_id: str, image: str, prompt: str, answer: str) -> dict[str, Any]:
    """One entry of a LLaVA training JSON: the image token leads the first human turn."""
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{prompt}"},
            {"from": "gpt", "value": answer},
        ],
    }


def answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


def write_vqav2(folder: Path, questions: Sequence[Question]) -> dict[str, str]:
    """The official questions and annotations JSON; images must be COCO_world_<image_id:012d>.jpg,
    with image_id = question_id (one question per image). `question_type` is the family name, so
    the official per-question-type breakdown is the per-family one."""
    info = {"description": "adallava synthetic world", "version": "1.0"}
    rows, annotations = [], []
    for q in questions:
        image_id = int(q.question_id)
        rows.append({"image_id": image_id, "question": q.qa.question, "question_id": int(q.question_id)})
        annotations.append(
            {
                "question_id": int(q.question_id),
                "image_id": image_id,
                "question_type": q.qa.family,
                "answer_type": answer_type(q.qa.answer),
                "multiple_choice_answer": q.qa.answer,
                "answers": [
                    {"answer": q.qa.answer, "answer_confidence": "yes", "answer_id": k + 1}
                    for k in range(HUMAN_ANSWERS)
                ],
            }
        )
    header = {"info": info, "license": {}, "data_subtype": VQAV2_SUBTYPE}
    write_json(
        folder / VQAV2_QUESTIONS,
        {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": rows},
    )
    write_json(folder / VQAV2_ANNOTATIONS, {**header, "data_type": "mscoco", "annotations": annotations})
    return {"questions": VQAV2_QUESTIONS, "annotations": VQAV2_ANNOTATIONS}


def write_pope(
    folder: Path, by_kind: Mapping[str, Sequence[Question]], prompts: Mapping[Any, str]
) -> dict[str, str]:
    """coco/coco_pope_<kind>.json (question_id, image, text, label) per kind, and LLaVA's question file
    that concatenates them in the same order (question_id, image, text, category)."""
    lines = []
    for kind, questions in by_kind.items():
        rows = [
            {
                "question_id": q.question_id,
                "image": Path(q.image).name,
                "text": q.qa.question,
                "label": q.qa.answer,
            }
            for q in questions
        ]
        write_jsonl(folder / "coco" / f"coco_pope_{kind}.json", rows)
        lines += [
            {
                "question_id": q.question_id,
                "image": Path(q.image).name,
                "text": prompts[q.question_id],
                "category": kind,
            }
            for q in questions
        ]
    write_jsonl(folder / POPE_QUESTIONS, lines)
    return {"questions": POPE_QUESTIONS, "annotation_dir": "coco"}


def write_mme_pair(root: Path, subtask: str, image_name: str, yes: QA, no: QA) -> None:
    """<subtask>/questions_answers_YN/<image stem>.txt: the Yes question, then the No question."""
    txt = root / subtask / "questions_answers_YN" / (Path(image_name).stem + ".txt")
    txt.parent.mkdir(parents=True, exist_ok=True)
    txt.write_text(f"{yes.question}\t{yes.answer}\n{no.question}\t{no.answer}\n", encoding="utf-8")


def write_textvqa(folder: Path, questions: Sequence[Question]) -> dict[str, str]:
    """TextVQA_0.5.1_val.json; images are train_images/<image_id>.jpg (where TextVQA keeps val)."""
    data = []
    for q in questions:
        image_id = Path(q.image).stem
        data.append(
            {
                "question": q.qa.question,
                "image_id": image_id,
                "image_classes": [],
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "image_width": 48,
                "image_height": 48,
                "answers": [q.qa.answer] * HUMAN_ANSWERS,
                "question_tokens": q.qa.question.rstrip("?").lower().split(),
                "question_id": int(q.question_id),
                "set_name": "val",
            }
        )
    write_json(
        folder / TEXTVQA_FILE,
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data},
    )
    return {"annotations": TEXTVQA_FILE}


def write_scienceqa(folder: Path, questions: Sequence[Question]) -> dict[str, str]:
    """problems.json ({pid: problem}) and pid_splits.json; images at images/test/<pid>/image.png."""
    problems = {}
    for q in questions:
        pid = str(q.question_id)
        problems[pid] = {
            "question": q.qa.question,
            "choices": list(q.qa.options),
            "answer": "ABCDE".index(q.qa.answer),
            "hint": q.qa.hint,
            "image": Path(q.image).name,
            "task": "closed choice",
            "grade": "grade1",
            "subject": "natural science",
            "topic": "shapes",
            "category": q.qa.family,
            "skill": q.qa.family,
            "lecture": "",
            "solution": "",
            "split": "test",
        }
    pids = [str(q.question_id) for q in questions]
    write_json(folder / "problems.json", problems)
    write_json(
        folder / "pid_splits.json", {"train": [], "val": [], "test": pids, "minival": [], "minitest": []}
    )
    return {"problems": "problems.json", "split_file": "pid_splits.json"}


def write_mmbench(folder: Path, questions: Sequence[Question], images: Mapping[Any, bytes]) -> dict[str, str]:
    """The MMBench TSV: 4 options, answer letter, category / l2-category, base64 image per row."""
    lines = ["\t".join(MMBENCH_COLUMNS)]
    for q in questions:
        category, l2 = MMBENCH_CATEGORIES[q.qa.family]
        cells = [str(q.question_id), q.qa.question, q.qa.hint, *q.qa.options]
        cells += [q.qa.answer, category, "world", l2, "", "dev"]
        cells.append(base64.b64encode(images[q.question_id]).decode("ascii"))
        for cell in cells:
            if "\t" in cell or "\n" in cell:
                raise ValueError(f"MMBench cell {cell!r} holds a tab or newline")
        lines.append("\t".join(cells))
    path = folder / MMBENCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": MMBENCH_FILE}

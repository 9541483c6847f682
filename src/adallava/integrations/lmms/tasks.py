"""The six benchmarks of the synthetic world as lmms-eval tasks: for each, the lmms-eval task whose
config and utilities it reuses, the split that config reads, and the rows of its dataset in the
columns that lmms-eval's own datasets have (the columns its task code reads, plus the metadata the
world has).

Rows are built from the world's official files through `adallava.eval.readers` (the samples
`adallava eval` scores), so a row's question, answers and image are exactly those of the official
files; row k of a task is sample k of the reader, which is how `compare` maps lmms-eval's logged
answers (by `doc_id`) back to question ids.

| world benchmark | task written          | lmms-eval config reused              | split      |
| --------------- | --------------------- | ------------------------------------ | ---------- |
| pope            | adallava_world_pope   | pope/pope.yaml                       | test       |
| mme             | adallava_world_mme    | mme/mme.yaml                         | test       |
| scienceqa       | ..._scienceqa_img     | scienceqa/scienceqa_img.yaml         | test       |
| textvqa         | ..._textvqa_val       | textvqa/textvqa_val.yaml             | validation |
| vqav2           | ..._vqav2_val         | vqav2/vqav2_val.yaml                 | validation |
| mmbench         | ..._mmbench_en_dev    | mmbench/mmbench_en_dev_static.yaml   | dev        |

MMBench uses lmms-eval's offline variant of mmbench_en_dev (`mmbench_en_dev_static`): the same prompt
and data, scored by `MMBench_Evaluator.eval_result(..., eval_method="static")`, which matches options
by rule (`can_infer`) and then by `extract_mcq_answer`, never asking a GPT judge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adallava.eval.records import (
    MMBenchSample,
    MMESample,
    POPESample,
    Sample,
    ScienceQASample,
    TextVQASample,
    VQAv2Sample,
)

TASK_PREFIX = "adallava_world_"
TAG = "adallava_world"  # `--tasks adallava_world` runs all six
SOURCE = "adallava-world"
OPTION_COLUMNS = ("A", "B", "C", "D")

Rows = Callable[[Sequence[Sample]], list[dict[str, Any]]]


@dataclass(frozen=True)
class TaskSpec:
    """One exported task. `features`: column -> type ("string", "int64", "image", a list of one type,
    or a dict of named types), the dataset's schema; `rows`: the samples as dataset rows."""

    benchmark: str
    lmms_task: str
    lmms_config: str
    split: str
    features: dict[str, Any]
    rows: Rows

    @property
    def name(self) -> str:
        return TASK_PREFIX + self.lmms_task


def _image(sample: Sample) -> str | dict[str, bytes]:
    """An image cell: a file path, or the encoded bytes (MMBench) as datasets' {"bytes": ...}."""
    if isinstance(sample.image, bytes):
        return {"bytes": sample.image}
    if sample.image is None:
        raise ValueError(f"question {sample.question_id}: no image (the world's questions all have one)")
    return str(sample.image)


def pope_rows(samples: Sequence[POPESample]) -> list[dict[str, Any]]:
    """lmms-lab POPE: question_id (str), question, answer (yes/no), image_source, category, image."""
    return [
        {
            "question_id": str(s.question_id),
            "question": s.question,
            "answer": s.answers[0],
            "image_source": Path(str(s.image)).stem,
            "category": s.category,
            "image": _image(s),
        }
        for s in samples
    ]


def mme_image_id(question_id: str) -> str:
    """'color/000002.png#1' -> 'color/000002.png': lmms-eval pairs an image's two questions by this id."""
    return str(question_id).split("#", 1)[0]


def mme_rows(samples: Sequence[MMESample]) -> list[dict[str, Any]]:
    """lmms-lab MME: question_id (<subtask>/<image file>, shared by an image's two questions), question
    (ending in 'Please answer yes or no.'), answer (Yes/No), category (the subtask), image."""
    return [
        {
            "question_id": mme_image_id(s.question_id),
            "question": s.question,
            "answer": s.answers[0],
            "category": s.subtask,
            "image": _image(s),
        }
        for s in samples
    ]


def scienceqa_rows(samples: Sequence[ScienceQASample]) -> list[dict[str, Any]]:
    """lmms-lab ScienceQA-IMG: question, choices, answer (the index of the right choice), hint, subject,
    grade, image."""
    return [
        {
            "question": s.question,
            "choices": list(s.choices),
            "answer": s.answer_index,
            "hint": s.hint,
            "subject": s.subject,
            "grade": s.grade,
            "image": _image(s),
        }
        for s in samples
    ]


def textvqa_rows(samples: Sequence[TextVQASample]) -> list[dict[str, Any]]:
    """lmms-lab textvqa: question_id (int), question, image_id, answers (10 strings), ocr_tokens (none:
    lmms-eval's textvqa_val does not show them), set_name, image."""
    return [
        {
            "question_id": int(s.question_id),
            "question": s.question,
            "image_id": s.image_id,
            "answers": list(s.answers),
            "ocr_tokens": [],
            "set_name": "val",
            "image": _image(s),
        }
        for s in samples
    ]


def vqav2_rows(samples: Sequence[VQAv2Sample]) -> list[dict[str, Any]]:
    """lmms-lab VQAv2: question_id, question, question_type, answer_type, image_id,
    multiple_choice_answer (the most common answer), answers [{answer, answer_confidence, answer_id}]
    (distinct answer_ids: lmms-eval's leave-one-out compares these dicts), image."""
    return [
        {
            "question_id": int(s.question_id),
            "question": s.question,
            "question_type": s.question_type,
            "answer_type": s.answer_type,
            "image_id": s.image_id,
            "multiple_choice_answer": Counter(s.answers).most_common(1)[0][0],
            "answers": [
                {"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                for k, answer in enumerate(s.answers)
            ],
            "image": _image(s),
        }
        for s in samples
    ]


def mmbench_rows(samples: Sequence[MMBenchSample]) -> list[dict[str, Any]]:
    """lmms-lab MMBench (en): index, question, hint (None when empty, as the TSV's NaN), A-D (None past the
    last option), answer, category, L2-category, source, split, comment, image."""
    rows = []
    for s in samples:
        if len(s.options) > len(OPTION_COLUMNS):
            raise ValueError(
                f"MMBench row {s.question_id}: {len(s.options)} options; lmms-eval shows at most 4"
            )
        options = dict.fromkeys(OPTION_COLUMNS)
        options.update(zip(OPTION_COLUMNS, s.options, strict=False))
        rows.append(
            {
                "index": int(s.question_id),
                "question": s.question,
                "hint": s.hint or None,
                **options,
                "answer": s.answers[0],
                "category": s.category,
                "L2-category": s.l2_category,
                "source": SOURCE,
                "split": "dev",
                "comment": None,
                "image": _image(s),
            }
        )
    return rows


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "pope", "pope", "pope/pope.yaml", "test",
        {"question_id": "string", "question": "string", "answer": "string", "image_source": "string",
         "category": "string", "image": "image"},
        pope_rows,
    ),
    TaskSpec(
        "mme", "mme", "mme/mme.yaml", "test",
        {"question_id": "string", "question": "string", "answer": "string", "category": "string",
         "image": "image"},
        mme_rows,
    ),
    TaskSpec(
        "scienceqa", "scienceqa_img", "scienceqa/scienceqa_img.yaml", "test",
        {"question": "string", "choices": ["string"], "answer": "int64", "hint": "string",
         "subject": "string", "grade": "string", "image": "image"},
        scienceqa_rows,
    ),
    TaskSpec(
        "textvqa", "textvqa_val", "textvqa/textvqa_val.yaml", "validation",
        {"question_id": "int64", "question": "string", "image_id": "string", "answers": ["string"],
         "ocr_tokens": ["string"], "set_name": "string", "image": "image"},
        textvqa_rows,
    ),
    TaskSpec(
        "vqav2", "vqav2_val", "vqav2/vqav2_val.yaml", "validation",
        {"question_id": "int64", "question": "string", "question_type": "string", "answer_type": "string",
         "image_id": "int64", "multiple_choice_answer": "string",
         "answers": [{"answer": "string", "answer_confidence": "string", "answer_id": "int64"}],
         "image": "image"},
        vqav2_rows,
    ),
    TaskSpec(
        "mmbench", "mmbench_en_dev", "mmbench/mmbench_en_dev_static.yaml", "dev",
        {"index": "int64", "question": "string", "hint": "string", "A": "string", "B": "string",
         "C": "string", "D": "string", "answer": "string", "category": "string", "L2-category": "string",
         "source": "string", "split": "string", "comment": "string", "image": "image"},
        mmbench_rows,
    ),
)  # fmt: skip
TASKS_BY_NAME = {task.name: task for task in TASKS}
TASKS_BY_BENCHMARK = {task.benchmark: task for task in TASKS}


def task_config(spec: TaskSpec, lmms_tasks_dir: Path, data_file: str) -> dict[str, Any]:
    """The task's YAML content: lmms-eval's own config (`include`, an absolute path into the installed
    lmms_eval/tasks, so its prompts, generation settings, process_results and metrics apply unchanged,
    its `!function utils.*` resolved next to it), with the dataset replaced by a local parquet file
    (`data_file`, relative to the YAML: lmms-eval resolves it there)."""
    return {
        "include": str(Path(lmms_tasks_dir) / spec.lmms_config),
        "task": spec.name,
        "tag": [TAG],
        "dataset_path": "parquet",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: data_file}},
        "test_split": spec.split,
    }

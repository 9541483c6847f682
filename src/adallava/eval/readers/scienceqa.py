"""ScienceQA in its official format: problems.json ({pid: {question, choices, answer, hint, image,
subject, grade, ...}}) and pid_splits.json ({split: [pid, ...]}). ScienceQA-IMG is the test split's
questions that have an image (2017 of 4241)."""

from __future__ import annotations

from pathlib import Path

from adallava.eval.readers._files import field, load_json, optional_field
from adallava.eval.records import ScienceQASample
from adallava.inference.prompts import OPTION_LETTERS, multiple_choice_prompt


def read_scienceqa(
    problems: str | Path,
    split_file: str | Path,
    split: str = "test",
    image_dir: str | Path | None = None,
    images_only: bool = True,
) -> list[ScienceQASample]:
    """The problems of `split`, in split-file order; with `images_only`, only those with an image.

    Images are <pid>/<image> (LLaVA's images/<split>/<pid>/image.png layout), joined to `image_dir`.
    """
    problems, split_file = Path(problems), Path(split_file)
    table, pids = _table_and_split(problems, split_file, split)
    samples = []
    for position, pid in enumerate(pids):
        if not isinstance(pid, str) or pid not in table:
            raise ValueError(f"{split_file}: {split}[{position}] = {pid!r} is not a problem id of {problems}")
        where = f"{problems}: problem {pid!r}"
        problem = table[pid]
        if not isinstance(problem, dict):
            raise ValueError(f"{where}: expected a JSON object")
        image = optional_field(problem, "image", str, where)
        if images_only and not image:
            continue
        image_path = None if not image else Path(pid) / image
        if image_path is not None and image_dir is not None:
            image_path = Path(image_dir) / image_path
        samples.append(_sample(pid, problem, image_path, where))
    return samples


def _table_and_split(problems: Path, split_file: Path, split: str) -> tuple[dict, list]:
    """({pid: problem}, the split's problem ids) as the files hold them."""
    table = load_json(problems)
    if not isinstance(table, dict):
        raise ValueError(f"{problems}: expected a JSON object {{pid: problem}}")
    splits = load_json(split_file)
    if not isinstance(splits, dict) or split not in splits:
        found = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
        raise ValueError(f"{split_file}: no split {split!r} (found: {found})")
    pids = splits[split]
    if not isinstance(pids, list):
        raise ValueError(f"{split_file}: field '{split}' must be a list of problem ids")
    return table, pids


def _sample(pid: str, problem: dict, image_path: Path | None, where: str) -> ScienceQASample:
    """One problem as a sample, its choices and answer checked."""
    choices = field(problem, "choices", list, where)
    if not 2 <= len(choices) <= len(OPTION_LETTERS) or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: field 'choices' must be 2 to 5 strings, got {choices!r}")
    answer = field(problem, "answer", int, where)
    if not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: field 'answer' must index 'choices' (0..{len(choices) - 1}), got {answer}"
        )
    question = field(problem, "question", str, where)
    hint = optional_field(problem, "hint", str, where) or ""
    return ScienceQASample(
        question_id=pid,
        image=image_path,
        prompt=multiple_choice_prompt(question, choices, hint, context_label="Context: "),
        answers=(OPTION_LETTERS[answer],),
        question=question,
        hint=hint,
        choices=tuple(choices),
        answer_index=answer,
        subject=optional_field(problem, "subject", str, where) or "",
        grade=optional_field(problem, "grade", str, where) or "",
    )

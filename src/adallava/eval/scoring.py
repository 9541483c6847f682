"""Score prediction files in the official formats: one function per `adallava score` subcommand,
taking the same arguments (paths and a protocol) and returning the metric's result dataclass."""

from __future__ import annotations

from pathlib import Path

from adallava.eval.metrics import (
    MMBenchScore,
    MMEScore,
    POPEScore,
    ScienceQAScore,
    TextVQAScore,
    VQAv2Score,
    score_mmbench,
    score_mme,
    score_pope,
    score_scienceqa,
    score_textvqa,
    score_vqav2,
)
from adallava.eval.protocols import Protocol
from adallava.eval.readers import (
    answers_by_id,
    answers_by_round,
    read_llava_answers,
    read_mmbench,
    read_mme_results,
    read_pope,
    read_scienceqa,
    read_textvqa,
    read_vqa_results,
    read_vqav2,
    textvqa_predictions,
)

FilePath = str | Path


def score_vqav2_files(
    questions: FilePath, annotations: FilePath, predictions: FilePath, protocol: Protocol = "llava"
) -> VQAv2Score:
    """`predictions`: results JSON [{question_id, answer}] (LLaVA's converted answers, or raw outputs;
    the EvalAI processor is applied either way and is idempotent)."""
    samples = read_vqav2(questions, annotations)
    results = read_vqa_results(predictions)
    known = {sample.question_id for sample in samples}
    extra = [question_id for question_id in results if question_id not in known]
    if extra:
        # vqaTools/vqa.py loadRes asserts the same: results must be for the annotated questions.
        raise ValueError(
            f"{predictions}: {len(extra)} question ids are not annotated in {annotations} (e.g. {extra[0]})"
        )
    return score_vqav2(samples, results, protocol)


def score_textvqa_files(
    annotations: FilePath, predictions: FilePath, protocol: Protocol = "llava"
) -> TextVQAScore:
    """`predictions`: LLaVA answers jsonl (question_id = image id + prompt, or TextVQA question ids)."""
    samples = read_textvqa(annotations)
    return score_textvqa(samples, textvqa_predictions(samples, read_llava_answers(predictions)), protocol)


def score_pope_files(
    questions: FilePath, annotation_dir: FilePath, predictions: FilePath, protocol: Protocol = "llava"
) -> POPEScore:
    """`questions`: LLaVA's POPE question file; `annotation_dir`: coco_pope_<category>.json files;
    `predictions`: LLaVA answers jsonl."""
    return score_pope(
        read_pope(questions, annotation_dir), answers_by_id(read_llava_answers(predictions)), protocol
    )


def score_mme_dir(results_dir: FilePath, protocol: Protocol = "llava") -> MMEScore:
    """`results_dir`: the official eval tool's input, one <subtask>.txt per subtask."""
    return score_mme(read_mme_results(results_dir), protocol)


def score_scienceqa_files(
    problems: FilePath,
    split_file: FilePath,
    predictions: FilePath,
    protocol: Protocol = "llava",
    split: str = "test",
) -> ScienceQAScore:
    """ScienceQA-IMG: the image questions of `split`. Predictions for the split's text-only questions
    are allowed and ignored (LLaVA answers every test question)."""
    everything = read_scienceqa(problems, split_file, split=split, images_only=False)
    texts = answers_by_id(read_llava_answers(predictions))
    in_split = {sample.question_id for sample in everything}
    extra = [str(question_id) for question_id in texts if str(question_id) not in in_split]
    if extra:
        raise ValueError(
            f"{predictions}: {len(extra)} question ids are not in the {split!r} split (e.g. {extra[0]!r})"
        )
    samples = [sample for sample in everything if sample.image is not None]
    return score_scienceqa(samples, {str(key): text for key, text in texts.items()}, protocol)


def score_mmbench_files(data: FilePath, predictions: FilePath, protocol: Protocol = "llava") -> MMBenchScore:
    """`data`: the MMBench TSV; `predictions`: LLaVA answers jsonl (question_id = index, round_id)."""
    samples = read_mmbench(data, images=False)  # scoring needs no images: never decode them
    texts = answers_by_round(read_llava_answers(predictions))
    known = {int(sample.question_id) for sample in samples}
    keyed: dict[tuple[int, int], str] = {}
    for (question_id, round_id), text in texts.items():
        index = int(question_id) if str(question_id).isdigit() else None
        if index is None or index not in known:
            raise ValueError(f"{predictions}: question_id {question_id!r} is not an index of {data}")
        keyed[(index, round_id)] = text
    return score_mmbench(samples, keyed, protocol)

"""Readers for benchmark files in their official formats. Each returns typed records
(`adallava.eval.records`) and raises ValueError naming the file, line and field of any problem."""

from adallava.eval.readers.llava import (
    answers_by_id,
    answers_by_round,
    read_llava_answers,
    read_llava_questions,
    read_vqa_results,
)
from adallava.eval.readers.mmbench import mmbench_rotations, read_mmbench, rotate_mmbench
from adallava.eval.readers.mme import MMEResult, mme_results, read_mme, read_mme_results, write_mme_results
from adallava.eval.readers.pope import read_pope, read_pope_annotations
from adallava.eval.readers.scienceqa import read_scienceqa
from adallava.eval.readers.textvqa import read_textvqa, textvqa_predictions
from adallava.eval.readers.vqav2 import read_vqav2

__all__ = [
    "MMEResult",
    "answers_by_id",
    "answers_by_round",
    "mme_results",
    "mmbench_rotations",
    "read_llava_answers",
    "read_llava_questions",
    "read_mmbench",
    "read_mme",
    "read_mme_results",
    "read_pope",
    "read_pope_annotations",
    "read_scienceqa",
    "read_textvqa",
    "read_vqa_results",
    "read_vqav2",
    "rotate_mmbench",
    "textvqa_predictions",
    "write_mme_results",
]

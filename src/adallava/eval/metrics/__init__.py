"""Benchmark metrics as pure functions: samples + predictions -> a frozen result dataclass whose
`score` is the benchmark's primary number on a 0-100 scale. Each module's docstring states the
official script it reproduces and how the lmms-eval protocol differs."""

from adallava.eval.metrics.choice_letter import choice_letter
from adallava.eval.metrics.mmbench import MMBenchScore, mmbench_option, score_mmbench
from adallava.eval.metrics.mme import MMEScore, MMESubtaskScore, mme_answer, score_mme
from adallava.eval.metrics.pope import POPECategoryScore, POPEScore, pope_answer, score_pope
from adallava.eval.metrics.scienceqa import ScienceQAScore, scienceqa_letter, score_scienceqa
from adallava.eval.metrics.textvqa import TextVQAScore, score_textvqa, textvqa_accuracy
from adallava.eval.metrics.vqav2 import (
    VQAv2Score,
    leave_one_out_accuracy,
    leave_one_out_terms,
    official_vqa_accuracy,
    score_vqav2,
    vqav2_accuracy,
)

__all__ = [
    "MMBenchScore",
    "MMEScore",
    "MMESubtaskScore",
    "POPECategoryScore",
    "POPEScore",
    "ScienceQAScore",
    "TextVQAScore",
    "VQAv2Score",
    "choice_letter",
    "leave_one_out_accuracy",
    "leave_one_out_terms",
    "mmbench_option",
    "mme_answer",
    "official_vqa_accuracy",
    "pope_answer",
    "scienceqa_letter",
    "score_mmbench",
    "score_mme",
    "score_pope",
    "score_scienceqa",
    "score_textvqa",
    "score_vqav2",
    "textvqa_accuracy",
    "vqav2_accuracy",
]

"""The world's benchmarks as rows in the columns of lmms-eval's own datasets (what its task code reads),
checked on a small generated test world against the official files the rows come from."""

from collections import Counter

import pytest

from adallava.data.world.generate import generate_world
from adallava.eval.world import load_benchmark
from adallava.integrations.lmms.tasks import TASKS, TASKS_BY_BENCHMARK, mme_image_id, task_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "test"
    generate_world(path, split="test", seed=3, n=4, progress=False)
    return path


@pytest.fixture(scope="module")
def rows(world):
    return {spec.benchmark: spec.rows(load_benchmark(world, spec.benchmark)) for spec in TASKS}


def test_every_row_has_exactly_the_schema_columns(rows):
    # Bug caught: a column the schema (and so the parquet) lacks, or one the rows never fill.
    for spec in TASKS:
        assert rows[spec.benchmark], spec.name
        for row in rows[spec.benchmark]:
            assert list(row) == list(spec.features), spec.name


def test_pope_rows_carry_the_annotation_labels(world, rows):
    samples = load_benchmark(world, "pope")
    assert [r["answer"] for r in rows["pope"]] == [s.answers[0] for s in samples]
    assert all(r["answer"] in ("yes", "no") and isinstance(r["question_id"], str) for r in rows["pope"])
    assert {r["category"] for r in rows["pope"]} == {"random", "popular", "adversarial"}


def test_mme_pairs_share_an_id(rows):
    # lmms-eval's MME aggregation asserts two questions per question_id (one image): Yes and No here.
    by_id = Counter(r["question_id"] for r in rows["mme"])
    assert set(by_id.values()) == {2}
    answers = {}
    for r in rows["mme"]:
        answers.setdefault(r["question_id"], []).append(r["answer"])
    assert all(sorted(pair) == ["No", "Yes"] for pair in answers.values())
    assert mme_image_id("color/000002.png#1") == "color/000002.png"


def test_vqav2_answers_are_distinct_dicts(rows):
    # lmms-eval's VQAv2 leave-one-out drops the dicts equal to the held-out one: equal answer dicts
    # (no answer_id) would drop all ten and score every question 0.
    for r in rows["vqav2"]:
        assert [a["answer_id"] for a in r["answers"]] == list(range(1, 11))
        assert r["multiple_choice_answer"] == r["answers"][0]["answer"]


def test_scienceqa_answer_is_the_index_of_the_right_choice(world, rows):
    samples = load_benchmark(world, "scienceqa")
    for r, s in zip(rows["scienceqa"], samples, strict=True):
        assert "ABCDE"[r["answer"]] == s.answers[0] and r["choices"] == list(s.choices)


def test_mmbench_empty_cells_are_missing_values(rows):
    # lmms-eval puts the hint before the question unless it is NaN/None, and skips options that are.
    for r in rows["mmbench"]:
        assert r["hint"] is None or r["hint"]
        assert r["answer"] in "ABCD" and r[r["answer"]] is not None
        assert isinstance(r["image"]["bytes"], bytes)


def test_task_config_reuses_lmms_eval_config(tmp_path):
    spec = TASKS_BY_BENCHMARK["mmbench"]
    config = task_config(spec, tmp_path, "dev.parquet")
    assert config["include"] == str(tmp_path / "mmbench/mmbench_en_dev_static.yaml")
    assert config["task"] == "adallava_world_mmbench_en_dev" and config["tag"] == ["adallava_world"]
    assert (
        config["dataset_kwargs"] == {"data_files": {"dev": "dev.parquet"}} and config["test_split"] == "dev"
    )
    assert config["dataset_path"] == "parquet" and config["dataset_name"] is None  # not the hub's "en"

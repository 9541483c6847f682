"""`adallava score`: the fixture files give the hand-computed numbers; bad input exits 2 with a message."""

import json
from pathlib import Path

import pytest

from adallava import cli
from adallava.cli import command

F = Path(__file__).parent / "fixtures"

COMMANDS = {
    "vqav2": ["--questions", F / "vqav2/questions.json", "--annotations", F / "vqav2/annotations.json"]
    + ["--predictions", F / "vqav2/results.json"],
    "textvqa": ["--annotations", F / "textvqa/TextVQA_val.json"]
    + ["--predictions", F / "textvqa/answers.jsonl"],
    "pope": ["--questions", F / "pope/llava_pope_test.jsonl", "--annotation-dir", F / "pope/coco"]
    + ["--predictions", F / "pope/answers.jsonl"],
    "mme": ["--results-dir", F / "mme/results"],
    "scienceqa": ["--problems", F / "scienceqa/problems.json"]
    + ["--split-file", F / "scienceqa/pid_splits.json"]
    + ["--predictions", F / "scienceqa/answers.jsonl"],
    "mmbench": ["--data", F / "mmbench/mmbench_dev.tsv", "--predictions", F / "mmbench/answers.jsonl"],
}
EXPECTED = {
    ("vqav2", "llava"): 76.67,  # the official vqaEval rule (see tests/eval/test_vqav2.py)
    ("vqav2", "lmms-eval"): 230 / 3,
    ("textvqa", "llava"): 65.0,
    ("pope", "llava"): (200 / 3 + 180) / 3,
    ("pope", "lmms-eval"): 80.0,
    ("mme", "llava"): 43.75,
    ("scienceqa", "llava"): 80.0,
    ("scienceqa", "lmms-eval"): 60.0,
    ("mmbench", "llava"): 100 / 3,
    ("mmbench", "lmms-eval"): 100.0,
}


@pytest.fixture(autouse=True)
def only_score(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other subcommands are developed alongside; this file tests `score` alone.
    monkeypatch.setattr(command, "COMMANDS", ["score"])


def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ("name", not "benchmark": pytest-benchmark owns that fixture name.)
@pytest.mark.parametrize(("name", "protocol"), sorted(EXPECTED))
def test_json_scores(name: str, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([name, *COMMANDS[name], "--json", "--protocol", protocol], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["benchmark"] == name and result["protocol"] == protocol
    assert result["score"] == pytest.approx(EXPECTED[name, protocol])


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["pope", *COMMANDS["pope"]], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "POPE (protocol llava, n=12)"
    assert lines[2].split() == ["score", "82.22"]
    assert any(line.split()[:2] == ["popular", "75.00"] for line in lines)  # accuracy column first


def test_mme_notes_missing_subtasks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["mme", *COMMANDS["mme"]], capsys)
    assert code == 0 and "perception" in out and "note: no results for subtask(s) position" in err


def test_bad_file_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2}\n')
    args = ["pope", "--questions", F / "pope/llava_pope_test.jsonl", "--annotation-dir", F / "pope/coco"]
    code, out, err = run([*args, "--predictions", bad], capsys)
    assert code == 2 and out == ""
    assert "adallava score: error:" in err and "answers.jsonl, line 2: field 'text' is missing" in err


def test_missing_file_and_folder_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["mmbench", "--data", tmp_path / "nope.tsv", "--predictions", tmp_path / "a.jsonl"]
    code, _, err = run(missing, capsys)
    assert code == 2 and "nope.tsv" in err
    code, _, err = run(["textvqa", "--annotations", tmp_path, "--predictions", tmp_path], capsys)
    assert code == 2 and "error:" in err


def test_incomplete_predictions_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "results.json"
    partial.write_text(json.dumps([{"question_id": 420, "answer": "2"}]))
    args = ["--questions", F / "vqav2/questions.json", "--annotations", F / "vqav2/annotations.json"]
    code, _, err = run(["vqav2", *args, "--predictions", partial], capsys)
    assert code == 2 and "2 question(s) have no prediction: 421, 70" in err

"""Reader validation shared by every format: file, line and field named in each error."""

from pathlib import Path

import pytest

from adallava.eval.readers import answers_by_id, read_llava_answers, read_llava_questions


def test_question_file(tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "Q?", "category": "random"}\n\n'
        '{"question_id": "x", "text": "text only"}\n'
    )
    samples = read_llava_questions(path, image_dir="/img")
    assert [(s.question_id, str(s.image) if s.image else None, s.category) for s in samples] == [
        (1, "/img/a.jpg", "random"),
        ("x", None, ""),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question_id": 1}', r"line 2: field 'text' is missing"),
        ('{"question_id": 1.5, "text": "t"}', r"line 2: field 'question_id' must be int or str"),
        ('{"question_id": 1, "text": 3}', r"line 2: field 'text' must be str"),
        ('{"question_id": 1, "text": "t", "round_id": -1}', r"line 2: field 'round_id' must be >= 0"),
        ("[1, 2]", r"line 2: expected a JSON object"),
        ('{"question_id": 1, "text": "t"', r"line 2: not valid JSON"),
    ],
)
def test_answers_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 0, "text": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"answers\.jsonl, " + message):
        read_llava_answers(path)


def test_duplicate_answers(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 7, "text": "a"}\n{"question_id": 7, "text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2: duplicate question_id 7 \(first seen at .*line 1\)"):
        answers_by_id(read_llava_answers(path))

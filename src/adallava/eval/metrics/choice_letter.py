"""lmms-eval's fallback reading of a choice letter from free text (`extract_mcq_answer`, in
lmms_eval/tasks/_task_utils/mcq_extract.py, lmms-eval 0.7), which its offline MMBench scoring
(`MMBench_Evaluator.eval_result(..., eval_method="static")`, task mmbench_en_dev_static) applies to an
answer MMBench's rules could not read, instead of asking a GPT judge.

The rule: strip the answer, then strip each of `, . ! ? ; : ' "` from both ends in that order, pad
with one space each side. Candidates, each (letter, position, form), for each valid letter X:
"(X)" (parentheses, its last position), "X." (period), "X:" (colon), "X)" (right paren), "X " (space);
after the first occurrence of each answer phrase ("the answer is", ...), the first later X (phrase);
the stripped text starting with X not followed by a letter (start, position 0); ending with X not
preceded by a letter (end, position len - 1). Only when there is no candidate: any X at all (fallback,
its last position). The winner has the highest form priority (start 10, end 9, phrase 7, parentheses
6, period 5, colon 4, right paren 3, space 2, fallback 0), then the highest position; exact ties keep
the first candidate found. No candidate: "".
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
EDGE_CHARACTERS = (",", ".", "!", "?", ";", ":", "'", '"')
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
    "옵션", "정답은", "답은", "답:",  # Korean
    "答案是", "答案为", "选",  # Chinese
    "答えは",  # Japanese
)  # fmt: skip
PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4,
            "right_paren": 3, "space": 2, "fallback": 0}  # fmt: skip
_AFFIXED = (
    ("parentheses", "({})"),
    ("period", "{}."),
    ("colon", "{}:"),
    ("right_paren", "{})"),
    ("space", "{} "),
)


def choice_letter(response: str, letters: Sequence[str] | None = None) -> str:
    """The letter among `letters` (default A-H) that `response` names by lmms-eval's fallback rule, or
    "" when none is found."""
    if not response or not response.strip():
        return ""
    letters = tuple(letters) if letters else DEFAULT_LETTERS
    text = response.strip()
    for character in EDGE_CHARACTERS:
        text = text.strip(character)
    text = f" {text} "
    candidates: list[tuple[str, int, str]] = []
    for form, pattern in _AFFIXED:
        for letter in letters:
            shown = pattern.format(letter)
            if shown in text:
                candidates.append((letter, text.rfind(shown), form))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        found = lowered.find(phrase)
        if found != -1:
            for letter in letters:
                position = text.find(letter, found + len(phrase))
                if position != -1:
                    candidates.append((letter, position, "phrase"))
    stripped = text.strip()
    for letter in letters:
        if stripped.startswith(letter) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((letter, 0, "start"))
    for letter in letters:
        if stripped.endswith(letter) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((letter, len(text) - 1, "end"))
    if not candidates:
        candidates = [(letter, text.rfind(letter), "fallback") for letter in letters if letter in text]
    if not candidates:
        return ""
    candidates.sort(key=lambda c: (PRIORITY[c[2]], c[1]), reverse=True)
    return candidates[0][0]

"""LLaVA-1.5's evaluation prompts (the text of its eval question files, without the <image> token
and chat template). Readers fill `Sample.prompt` with these so that generation sees what LLaVA-1.5
saw; scoring never depends on them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = ("A", "B", "C", "D", "E")


def short_answer_prompt(question: str, ocr_tokens: Sequence[str] | None = None) -> str:
    """VQAv2 / POPE / MME / TextVQA: "question\\n[Reference OCR token: a, b\\n]Answer ... phrase."."""
    lines = [question]
    if ocr_tokens:
        lines.append("Reference OCR token: " + ", ".join(ocr_tokens))
    lines.append(SHORT_ANSWER)
    return "\n".join(lines)


def multiple_choice_prompt(
    question: str, options: Sequence[str], context: str = "", context_label: str = ""
) -> str:
    """ScienceQA ("Context: " label) and MMBench (bare hint): context, question, "A. x" lines, instruction."""
    lines = [f"{context_label}{context}"] if context else []
    lines.append(question)
    lines.extend(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=False))
    lines.append(LETTER_ANSWER)
    return "\n".join(lines)


def chat_prompt(processor, question: str) -> str:
    """One question about one image as the model expects it: the processor's chat template when it has
    one, else LLaVA-1.5's `USER: <image>\n{question} ASSISTANT:`."""
    return conversation_prompt(
        processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    )


def conversation_prompt(processor, messages: Sequence[dict]) -> str:
    """A conversation in Hugging Face's chat format ({"role", "content": [{"type": "image"} |
    {"type": "text", "text"}]}) as the model's prompt, ready for the model's answer: the processor's
    chat template when it has one, else LLaVA-1.5's v1 format (`USER: <image>\n... ASSISTANT:`)."""
    if chat_template_owner(processor) is not None:
        return processor.apply_chat_template(list(messages), add_generation_prompt=True)
    turns = []
    for message in messages:
        parts = message["content"]
        text = "".join("<image>\n" if part["type"] == "image" else part["text"] for part in parts)
        role = {"user": "USER: ", "assistant": "ASSISTANT: "}.get(message["role"], "")
        turns.append(f"{role}{text}")
    return " ".join(turns) + " ASSISTANT:"


def chat_template_owner(processor, prompt_format: str = "auto", setting: str = "prompt_format"):
    """Whose chat template renders prompts: the processor's, else its tokenizer's; None for LLaVA-1.5's
    v1 format (prompt_format 'llava_v1', or 'auto' when neither has a template). 'chat_template'
    without a template is a ValueError that names the `setting` to change."""
    if prompt_format == "llava_v1":
        return None
    for owner in (processor, processor.tokenizer):
        if getattr(owner, "chat_template", None):
            return owner
    if prompt_format == "chat_template":
        raise ValueError(
            f"{setting} is 'chat_template' but neither the processor nor its tokenizer has a chat "
            f"template; add one to the model folder or set {setting}: llava_v1"
        )
    return None


def template_content_form(
    renders: Callable[[str], bool], forms: Sequence[str] = ("parts", "text")
) -> str | None:
    """The first content form a chat template takes, or None: chat templates take message content as
    typed parts ("parts": [{"type": "image"}, {"type": "text", ...}]) or as a string with the image
    token inline ("text"). renders(form): whether the template rendered a probe in that form as
    expected; a template that raises on a form does not take it."""
    for form in forms:
        try:
            if renders(form):
                return form
        except Exception:  # a template that cannot take this content form
            continue
    return None

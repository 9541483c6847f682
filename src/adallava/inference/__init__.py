"""The one path from a prompt to an answer: chat prompts (`prompts`) and batched, per-row-budget
answering (`answering`), used by `adallava ask`, the server, evaluation and the held-out report."""

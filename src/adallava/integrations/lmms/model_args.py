"""The settings of `lmms-eval --model adallava --model_args k=v,...`, checked before anything loads.

lmms-eval splits `--model_args` on commas and turns each value into a bool, int, float or string
(`lmms_eval.utils.handle_arg_string`), then adds `batch_size`, `max_batch_size` and `device` from its
own flags. `model_args` takes exactly that keyword dict and returns a checked `ModelArgs`; a bad value
is a ValueError naming the setting, the value and the allowed forms.
"""

from __future__ import annotations

from dataclasses import dataclass

from adallava.core.budget import parse_budget, parse_flops
from adallava.core.config import SWITCH_KINDS, TOKEN_SELECTIONS
from adallava.core.deadline import Deadline
from adallava.eval.args import DTYPES
from adallava.io.hub import DEFAULT_MODEL

NO_BUDGET = "none"  # budget=none: the full model without a scheduler (also a base model's only option)
BUDGET_FORMS = (
    "a fraction in (0, 1] such as 0.6, a FLOPs cap such as 2M or 3.5T, a deadline such as 30ms or 0.03s, "
    f"or {NO_BUDGET} (the full model)"
)
Budget = float | str | Deadline


@dataclass(frozen=True)
class ModelArgs:
    """One lmms-eval model's settings (docs/lmms-eval.md)."""

    pretrained: str = DEFAULT_MODEL
    """Model folder or bundled name (tiny-adallava-l, tiny-adallava-h, tiny-llava)."""
    budget: Budget | None = None
    """Every request's budget unless its task's generation_kwargs (or `--gen_kwargs budget=...`) give one:
    a fraction (float), a FLOPs cap (a string such as '2M'), a `Deadline`, or None: 1.0 for a model with a
    trained scheduler, the full model for one without (budget=none asks for the latter explicitly)."""
    full_model: bool = False
    """budget=none: run every layer, no scheduler (the base model's behaviour)."""
    switches: str | None = None
    """The switch kind the checkpoint must have (layer or head); None: whatever it has. A model's switch
    kind is fixed by its training, so this is a check, not a conversion."""
    token_selection: str | None = None
    """Override the model's visual token selection (none, prumerge, prumerge+, prumerge+offset)."""
    batch_size: int = 1
    """Requests per generate call (left padding; greedy answers do not depend on it)."""
    dtype: str = "float32"
    """Weights and pixel dtype: float32, bfloat16 or float16."""
    device: str | None = None
    """Torch device; None: cuda when available, else cpu."""
    max_new_tokens: int = 128
    """New tokens for a task whose generation_kwargs set none (LLaVA's eval default)."""
    best_effort: bool = False
    """Deadline budgets: run the smallest plan when a deadline cannot be met instead of failing."""


def model_args(**given) -> ModelArgs:
    """A checked `ModelArgs` from lmms-eval's parsed `--model_args` (plus its batch_size, device and
    max_batch_size, the last of which is accepted and ignored: batches have a fixed size)."""
    given.pop("max_batch_size", None)
    known = set(ModelArgs.__dataclass_fields__) - {"full_model"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"adallava model_args: unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(known))}"
        )
    values = dict(given)
    if "pretrained" in values:
        values["pretrained"] = str(values["pretrained"])
    if "budget" in values:
        values["budget"], values["full_model"] = _budget(values["budget"])
    values["batch_size"] = _positive_int("batch_size", values.get("batch_size", 1))
    values["max_new_tokens"] = _positive_int("max_new_tokens", values.get("max_new_tokens", 128))
    _choice("switches", values.get("switches"), SWITCH_KINDS)
    _choice("token_selection", values.get("token_selection"), TOKEN_SELECTIONS)
    _choice("dtype", values.get("dtype", "float32"), DTYPES)
    if values.get("device") is not None:
        values["device"] = str(values["device"])
    if not isinstance(values.get("best_effort", False), bool):
        raise ValueError(
            f"adallava model_args: best_effort must be true or false; got {values['best_effort']!r}"
        )
    return ModelArgs(**values)


def parse_budget_value(value) -> Budget:
    """A budget from lmms-eval's parsed arguments (a number or a string), checked: a fraction in (0, 1],
    a FLOPs amount, or a deadline. ValueError names the value and the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"adallava budget {value!r}: expected {BUDGET_FORMS}")
    try:
        budget = parse_budget(str(value).strip())
    except ValueError as error:  # a mistyped deadline: its own message names the forms
        raise ValueError(f"adallava budget {value!r}: {error}") from None
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(
                f"adallava budget {value!r}: a fraction must lie in (0, 1]; expected {BUDGET_FORMS}"
            )
        return budget
    if isinstance(budget, str):
        try:
            parse_flops(budget)
        except ValueError:
            raise ValueError(f"adallava budget {value!r}: expected {BUDGET_FORMS}") from None
    return budget


def _budget(value) -> tuple[Budget | None, bool]:
    if isinstance(value, str) and value.strip().lower() == NO_BUDGET:
        return None, True
    return parse_budget_value(value), False


def _positive_int(name: str, value) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        extra = " (lmms-eval's 'auto' batch size is not supported)" if text.startswith("auto") else ""
        raise ValueError(f"adallava model_args: {name} must be an integer >= 1; got {value!r}{extra}")
    return int(text)


def _choice(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"adallava model_args: {name} must be one of {', '.join(allowed)}; got {value!r}")

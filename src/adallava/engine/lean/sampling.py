"""What the lean decode loop supports of Hugging Face's generation options, and how it picks tokens.

The options are resolved exactly as HF `generate` resolves them (call kwargs over
`model.generation_config` over HF's global defaults, `hf_compat.generation_config`), then checked:
anything the lean loop does not implement (beam search, repetition penalties, ...) is refused with
an error that names it and points to `engine="hf"`, never silently ignored. Token choice follows
HF's rules (processors, then sampling warpers in HF's order): suppressed tokens and the end of
sequence before `min_new_tokens` get -inf, then temperature, top-k and top-p, then a multinomial draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adallava.engine import hf_compat

# Generation options the lean loop honours; others must keep HF's default value.
SUPPORTED = {
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "suppress_tokens",
    "use_cache",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "transformers_version",
    "_from_model_config",
}
# Model kwargs the lean loop takes besides the generation options.
MODEL_INPUTS = {"pixel_values", "streamer", "stopping_criteria", "generator"}


@dataclass(frozen=True)
class Sampling:
    """Resolved generation options of one lean `generate` call."""

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    suppress_tokens: tuple[int, ...]
    return_dict: bool
    output_scores: bool
    output_logits: bool


def resolve_sampling(
    model, prompt_length: int, kwargs: dict, memo: dict | None = None
) -> tuple[Sampling, dict]:
    """(options, model kwargs left over) for a call with `kwargs` on a prompt of `prompt_length`
    tokens. Raises ValueError naming any option the lean loop does not support. `memo` (a dict kept
    by the caller) remembers resolved options by call options and the model's generation config, so
    steady-state calls skip HF's config merge (a deep copy)."""
    rest = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_INPUTS}
    key = None
    if memo is not None and "generation_config" not in kwargs:
        key = (prompt_length, _frozen(kwargs), _frozen(vars(model.generation_config)))
        key = None if None in key else key
        if key is not None and key in memo:
            return memo[key], rest
    sampling = _resolve(model, prompt_length, kwargs, rest)
    if key is not None:
        if len(memo) >= 64:
            memo.pop(next(iter(memo)))
        memo[key] = sampling
    return sampling, rest


def _frozen(options: dict) -> tuple | None:
    """A hashable form of generation options (None when some value cannot be compared safely)."""
    items = []
    for name, value in sorted(options.items()):
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, (int, float, str, bool, tuple, type(None))):
            return None
        items.append((name, value))
    return tuple(items)


def _resolve(model, prompt_length: int, kwargs: dict, rest: dict) -> Sampling:
    config, unused = hf_compat.generation_config(model, kwargs.pop("generation_config", None), kwargs)
    rest.update(unused)
    unknown = sorted(set(rest) - MODEL_INPUTS)
    changed = sorted(
        name
        for name, value in config.to_diff_dict().items()
        if name not in SUPPORTED and value != hf_compat.generation_default(name)
    )
    if config.num_beams != 1 or config.num_return_sequences != 1:
        changed.append("num_beams / num_return_sequences")
    if config.output_attentions or config.output_hidden_states:
        changed.append("output_attentions / output_hidden_states")
    if unknown or changed:
        raise ValueError(
            f"the lean engine does not support {', '.join(unknown + changed)}; pass engine='hf' to run "
            "Hugging Face generate (greedy and sampling with temperature, top_k, top_p, min_new_tokens, "
            "suppress_tokens, streamers and stopping criteria are supported by both)"
        )
    max_new = config.max_new_tokens
    if max_new is None:
        max_new = config.max_length - prompt_length
    if max_new < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new} (max_length {config.max_length})")
    min_new = config.min_new_tokens or max(0, (config.min_length or 0) - prompt_length)
    eos = config.eos_token_id
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    sampling = Sampling(
        max_new_tokens=int(max_new),
        min_new_tokens=int(min_new),
        do_sample=bool(config.do_sample),
        temperature=float(config.temperature if config.temperature is not None else 1.0),
        top_k=config.top_k,
        top_p=float(config.top_p if config.top_p is not None else 1.0),
        eos_token_ids=eos,
        pad_token_id=int(pad),
        suppress_tokens=tuple(config.suppress_tokens or ()),
        return_dict=bool(config.return_dict_in_generate),
        output_scores=bool(config.output_scores),
        output_logits=bool(config.output_logits),
    )
    if sampling.do_sample and not sampling.temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {sampling.temperature}")
    if not 0.0 < sampling.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
    return sampling


class TokenChooser:
    """Picks each step's tokens for one generate call: the id tensors it needs are made once."""

    def __init__(self, sampling: Sampling, device, generator: torch.Generator | None = None):
        self.sampling, self.generator = sampling, generator
        self.suppress = _ids(sampling.suppress_tokens, device) if sampling.suppress_tokens else None
        self.eos = _ids(sampling.eos_token_ids, device) if sampling.eos_token_ids else None

    def __call__(self, logits: torch.Tensor, produced: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, V], chosen long [B]) from raw logits [B, V] after `produced` new tokens."""
        scores = process_logits(logits, self.sampling, produced, self.suppress, self.eos)
        return scores, choose_tokens(scores, self.sampling, self.generator)

    def finished(self, chosen: torch.Tensor) -> torch.Tensor:
        """bool [B]: rows whose token ends their sequence."""
        if self.eos is None:
            return torch.zeros_like(chosen, dtype=torch.bool)
        if self.eos.numel() == 1:
            return chosen == self.eos
        return torch.isin(chosen, self.eos)


def process_logits(logits: torch.Tensor, sampling: Sampling, produced: int, suppress, eos) -> torch.Tensor:
    """The scores tokens are chosen from: raw logits [B, V] (float32) with HF's processors, and for
    sampling its warpers, applied (`produced`: new tokens so far). suppress / eos: long id tensors of
    `sampling.suppress_tokens` / `eos_token_ids`, or None when there are none (`TokenChooser`)."""
    scores = logits
    if suppress is not None:
        scores = scores.index_fill(-1, suppress, float("-inf"))
    if produced < sampling.min_new_tokens and eos is not None:
        scores = scores.index_fill(-1, eos, float("-inf"))
    if not sampling.do_sample:
        return scores
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k is not None and sampling.top_k > 0:
        k = min(sampling.top_k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        # Remove the least likely tokens whose probabilities add up to at most 1 - top_p (the most
        # likely token always stays): HF's TopPLogitsWarper rule.
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - sampling.top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


def choose_tokens(
    scores: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """long [B]: the argmax of each row's scores, or a draw from their softmax when sampling."""
    if not sampling.do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _ids(ids: tuple[int, ...], device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long, device=device)

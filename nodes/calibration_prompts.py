"""Several prompts in one calibration: each conditioning samples the same seeds, results are stacked.

OTCache Calibrate calibrates on its connected ``positive`` and, optionally, on more prompts written
one per line and encoded with a connected CLIP exactly as ``CLIPTextEncode`` does. A calibration
sample is then a (prompt, seed) pair: prompt-major rows ``p * S + s`` for ``P`` prompts and ``S``
seeds. Every stage sees the stacked batch, so the edge errors (relative L1 over the batch) and the
anchor objective average over prompts x seeds.

Each conditioning runs as its own sampling of the ``S`` seeds rather than as rows of one batch:
prompts may encode to different token counts (Qwen-Image's tokenizer does not pad) and a connected
positive may carry areas, masks or control models that cannot be stacked row by row. On a GPU a
batch of a few seeds of a large model is already a full batch, so little is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import torch

from ..otcache_core.calibrate import SamplingResult
from ..otcache_core.errors import OTCacheError

CONNECTED_POSITIVE = "(the connected positive)"
"""How the record lists the connected conditioning among the prompts."""


def prompt_lines(text: str) -> list[str]:
    """The prompts of a multi-line input: one per non-blank line, stripped, in order, repeats dropped."""
    return list(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))


def encode_prompts(clip: Any, prompts: Sequence[str], like: Any = None) -> list[Any]:
    """Each prompt as ``CLIPTextEncode`` makes it: ``clip.tokenize`` then ``encode_from_tokens_scheduled``.

    Plain settings of the conditioning ``like`` (numbers and strings in its first entry, e.g. the
    ``guidance`` FluxGuidance sets) are copied to every prompt that lacks them, so the prompts are
    sampled as the connected positive is. Tensors, masks and control models are never copied.
    """
    if prompts and clip is None:
        raise OTCacheError("'prompts' needs a connected 'clip' to encode them: connect the CLIP of your text "
                           "encoder loader, or clear 'prompts'")
    settings = {k: v for k, v in (like[0][1] if like else {}).items() if isinstance(v, (bool, int, float, str))}
    encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in prompts]
    return [[[context, {**settings, **extras}] for context, extras in cond] for cond in encoded]


def stack_results(results: Sequence[SamplingResult]) -> SamplingResult:
    """One result whose batch is the results' batches one after another.

    Tensors are concatenated along the batch dimension, per key in dicts and per position in lists
    (``states``); per-step numbers shared by every sampling (``step_sizes``) are taken once; model
    calls add up. Any field a later version adds follows the same rules.
    """
    if len(results) == 1:
        return results[0]
    first = results[0]
    values = {f.name: _stack([getattr(r, f.name) for r in results], f.name) for f in fields(first)}
    return replace(first, **values)


def _stack(parts: list[Any], name: str) -> Any:
    head = parts[0]
    if torch.is_tensor(head):
        return torch.cat(parts)
    if isinstance(head, bool) or head is None:
        return head
    if isinstance(head, (int, float)):
        return sum(parts)
    if isinstance(head, dict):
        keys = [k for k in head if all(k in p for p in parts)]
        return {k: _stack([p[k] for p in parts], name) for k in keys}
    if isinstance(head, list):
        if head and torch.is_tensor(head[0]):
            return [torch.cat(items) for items in zip(*parts)]
        return head  # per-step numbers of the shared sigma schedule
    raise TypeError(f"cannot stack the sampling results' field {name!r} of type {type(head).__name__}")


class PromptSampler:
    """The calibration ``Sampler`` over several conditionings: one inner sampler each, results stacked."""

    def __init__(self, samplers: Sequence[Any], labels: Sequence[str]) -> None:
        if not samplers:
            raise ValueError("need at least one conditioning")
        self.samplers, self.labels = list(samplers), list(labels)
        first = self.samplers[0]
        self.steps, self.sigmas = first.steps, first.sigmas
        self.latent_image = torch.cat([s.latent_image for s in self.samplers])

    @property
    def model_calls(self) -> int:
        return sum(s.model_calls for s in self.samplers)

    def run(self, mask: Sequence[bool], **kwargs: Any) -> SamplingResult:
        """Each inner sampler runs on its own rows of any batched argument (a replay's ``state``)."""
        sizes = [s.latent_image.shape[0] for s in self.samplers]
        parts = {k: torch.split(v, sizes) for k, v in kwargs.items()
                 if torch.is_tensor(v) and v.ndim and v.shape[0] == sum(sizes)}
        return stack_results([s.run(mask, **{**kwargs, **{k: p[n] for k, p in parts.items()}})
                              for n, s in enumerate(self.samplers)])


def prompt_sampler(make: Callable[[Any], Any], positive: Any, clip: Any, prompts: str) -> tuple[Any, list[str], list[Any]]:
    """The sampler for ``positive`` plus the ``prompts`` lines, with the record's labels and all conditionings.

    ``make(conditioning)`` builds the sampler of one conditioning. With no prompt lines this is that
    sampler itself: a calibration without prompts is exactly what it was before prompts existed.
    """
    lines = prompt_lines(prompts)
    conds = [positive, *encode_prompts(clip, lines, like=positive)]
    labels = [CONNECTED_POSITIVE, *lines]
    if len(conds) == 1:
        return make(positive), labels, conds
    return PromptSampler([make(c) for c in conds], labels), labels, conds

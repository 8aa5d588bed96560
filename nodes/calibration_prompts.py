"""Several prompts in one calibration: each conditioning samples the same seeds, results are stacked.

OTCache Calibrate calibrates on its connected ``positive`` and, optionally, on more prompts written
one per line and encoded with a connected CLIP exactly as ``CLIPTextEncode`` does. A calibration
sample is then a (prompt, seed) pair: prompt-major rows ``p * S + s`` for ``P`` prompts and ``S``
seeds. Every stage sees the stacked batch, so the edge errors (relative L1 over the batch) and the
anchor objective average over prompts x seeds.

How the prompts are sampled: plain text conditionings of the same shape (one entry, tensors of
batch 1, the same keys; what CLIP Text Encode makes) are *batched*, each prompt's row repeated for
its seeds, as long as a run's latent stays within :data:`BATCH_ELEMENTS` elements (never fewer
than the seeds of one prompt, so a large model samples one prompt at a time, as a calibration
without prompts does). Anything else (another token count: Qwen-Image's tokenizer does not pad; a
positive with areas, masks or control models) samples as its own batch of seeds. On a small model
a batch costs about as much as one row, so batching makes a calibration on P prompts cost about as
much as one on one prompt; on a large one each prompt is a full batch anyway.
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

BATCH_ELEMENTS = 1 << 20
"""Most latent elements of one calibration run that batches several prompts (two 1024x1024 FLUX
latents; 1024 rows of the DigitFlux testbed)."""

PLAIN = (bool, int, float, str)


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
    settings = {k: v for k, v in (like[0][1] if like else {}).items() if isinstance(v, PLAIN)}
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
    """The calibration ``Sampler`` over several batches of samples: one inner sampler each, results stacked."""

    def __init__(self, samplers: Sequence[Any]) -> None:
        if not samplers:
            raise ValueError("need at least one conditioning")
        self.samplers = list(samplers)
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


def _signature(cond: Any) -> tuple | None:
    """What two conditionings must share to be batched row by row; ``None``: never batched."""
    if not isinstance(cond, list) or len(cond) != 1:
        return None
    context, extras = cond[0]
    if not torch.is_tensor(context) or context.shape[0] != 1:
        return None
    parts = [("", tuple(context.shape), context.dtype)]
    for key, value in sorted(extras.items()):
        if torch.is_tensor(value) and value.ndim and value.shape[0] == 1:
            parts.append((key, tuple(value.shape), value.dtype))
        elif value is None or isinstance(value, PLAIN):
            parts.append((key, value))
        else:
            return None  # areas, masks, control models, hooks ...
    return tuple(parts)


def _batched(conds: Sequence[Any], repeats: int) -> Any:
    """One conditioning whose rows are each of ``conds`` repeated ``repeats`` times (prompt-major); a
    single conditioning is returned as it is (ComfyUI repeats a batch-1 conditioning itself)."""
    if len(conds) == 1:
        return conds[0]
    entries = [c[0] for c in conds]
    context = torch.cat([e[0] for e in entries]).repeat_interleave(repeats, dim=0)
    extras = {key: torch.cat([e[1][key] for e in entries]).repeat_interleave(repeats, dim=0)
              if torch.is_tensor(value) else value for key, value in entries[0][1].items()}
    return [[context, extras]]


def batches(conds: Sequence[Any], rows: int, row_elements: int, limit: int = BATCH_ELEMENTS) -> list[list[int]]:
    """Consecutive conditionings that sample as one batch (indices into ``conds``, in order), for
    ``rows`` latent rows of ``row_elements`` elements per prompt."""
    per_prompt = rows * max(1, row_elements)
    fit = max(1, limit // per_prompt)
    out: list[list[int]] = []
    last = None
    for index, cond in enumerate(conds):
        signature = _signature(cond)
        if out and signature is not None and signature == last and len(out[-1]) < fit:
            out[-1].append(index)
        else:
            out.append([index])
        last = signature
    return out


def prompt_sampler(make: Callable[[Any, int], Any], positive: Any, clip: Any, prompts: str, rows: int,
                   row_elements: int) -> tuple[Any, list[str], list[Any]]:
    """The sampler for ``positive`` plus the ``prompts`` lines, with the record's labels and all conditionings.

    ``make(conditioning, n)`` builds the sampler of a conditioning whose rows are ``n`` prompts,
    each repeated for its ``rows`` latent rows (seeds x latent batch, in the sampler's order);
    ``row_elements`` is the size of one latent row. With no prompt lines this is ``make(positive,
    1)`` itself: a calibration without prompts is exactly what it was before prompts existed.
    """
    lines = prompt_lines(prompts)
    conds = [positive, *encode_prompts(clip, lines, like=positive)]
    labels = [CONNECTED_POSITIVE, *lines]
    if len(conds) == 1:
        return make(positive, 1), labels, conds
    groups = batches(conds, rows, row_elements)
    samplers = [make(_batched([conds[i] for i in group], rows), len(group)) for group in groups]
    return PromptSampler(samplers), labels, conds

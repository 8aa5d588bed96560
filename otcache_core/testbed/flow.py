"""A cached Euler sampler for rectified-flow models with a block split: OTCache's reference host.

The model predicts the velocity ``v = noise - x0`` at time ``t`` (``x_t = (1 - t) x0 + t noise``), so
the clean-sample prediction is ``x0_hat = x_t - t v``. Classifier-free guidance batches cond and
uncond rows in one call: ``v = v_u + s (v_c - v_u)``; Euler steps ``x_{k+1} = x_k + (t_{k+1} - t_k) v``.

Two reuse modes, both through :class:`otcache_core.runtime.CacheRun`:

* ``blocks``: the residual of the block stack (``h_out - h_in``) per CFG stream; skipped steps still
  run the embedders and the head.
* ``model``: the whole model output, the velocity ``v``, per stream: what OTCache's ComfyUI hook keeps
  (``eps = (x - denoised) / sigma`` is ``v`` for flow models), so the testbed measures what ComfyUI
  users get.

A reused step's stand-in follows the step's reuse rule (:mod:`otcache_core.reuse`), extrapolated
along ``t`` (= sigma) from what the stream stored at earlier computed steps.

:class:`FlowSampler` implements :class:`otcache_core.calibrate.Sampler` for the calibration stages.
With a :class:`~otcache_core.runtime.StepPolicy` a run decides its steps at runtime instead (the
adaptive baselines); the policy sees :class:`StepInputs` and the cached part's output.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..calibrate import SamplingResult, checked_range
from ..reuse import ReuseRule, step_rules
from ..runtime import CacheRun, StepPolicy
from ..schedule import Schedule

MODES: tuple[str, ...] = ("blocks", "model")


class SplitModel(Protocol):
    """A velocity model whose forward is ``head(blocks(embed(x, t, y)))``."""

    blocks: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInputs:
    """What a step policy may look at for one model call (all rows: cond then uncond).

    ``x`` is the model input, ``inp`` the input of the cached part (the block-stack input ``h`` in
    ``blocks`` mode, ``x`` in ``model`` mode), ``c`` the conditioning vector (``None`` in ``model``
    mode) and ``t`` the time of the step.
    """

    x: torch.Tensor
    inp: torch.Tensor
    c: torch.Tensor | None
    t: float


def _streams(rows: int, cfg: bool) -> list[tuple[str, slice]]:
    """Row ranges of the batched call: cond rows first, then uncond rows."""
    if not cfg:
        return [("cond", slice(0, rows))]
    return [("cond", slice(0, rows)), ("uncond", slice(rows, 2 * rows))]


class CachedVelocity:
    """The guided velocity at one step, computed or reused per the run's schedule."""

    def __init__(self, model: SplitModel, labels: torch.Tensor, cfg_scale: float, null_class: int, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.cfg_scale, self.mode = model, float(cfg_scale), mode
        self.use_cfg = self.cfg_scale != 1.0
        null = torch.full_like(labels, null_class)
        self.labels = torch.cat([labels, null]) if self.use_cfg else labels

    def _batch(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        xx = torch.cat([x, x]) if self.use_cfg else x
        return xx, torch.full((xx.shape[0],), t, dtype=x.dtype, device=x.device)

    def _guide(self, out: torch.Tensor, rows: int) -> torch.Tensor:
        if not self.use_cfg:
            return out
        v_cond, v_uncond = out[:rows], out[rows:]
        return v_uncond + self.cfg_scale * (v_cond - v_uncond)

    def full(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Uncached guided velocity (no cache read or write)."""
        xx, tt = self._batch(x, t)
        return self._guide(self.model(xx, tt, self.labels), x.shape[0])

    def __call__(self, run: CacheRun, step: int, x: torch.Tensor, t: float) -> tuple[torch.Tensor, bool]:
        """Guided velocity at ``step``; returns ``(v, computed)``."""
        xx, tt = self._batch(x, t)
        streams = _streams(x.shape[0], self.use_cfg)
        start = run.clock(x.device)
        if self.mode == "model":
            keys = [("model", name) for name, _ in streams]
            features = StepInputs(xx, xx, None, t) if run.policy is not None else None
            reuse = run.plan_call(step, run.ready(keys, like=xx[streams[0][1]]), features)
            if reuse:
                out = torch.cat([run.standin(key, step, t) for key in keys])
            else:
                out = self.model(xx, tt, self.labels)
                if out.shape == xx.shape:
                    for key, (_, rows) in zip(keys, streams):
                        run.store(key, out[rows], t)
                run.observe(step, features, out)
        else:
            keys = [("blocks", name) for name, _ in streams]
            h, c = self.model.embed(xx, tt, self.labels)
            features = StepInputs(xx, h, c, t) if run.policy is not None else None
            reuse = run.plan_call(step, run.ready(keys, like=h[streams[0][1]]), features)
            if reuse:
                h_out = torch.cat([h[rows] + run.standin(key, step, t) for key, (_, rows) in zip(keys, streams)])
            else:
                h_out = h
                for block in self.model.blocks:
                    h_out = block(h_out, c)
                for key, (_, rows) in zip(keys, streams):
                    run.store(key, h_out[rows] - h[rows], t)
                run.observe(step, features, h_out)
            out = self.model.head(h_out, c)
        run.add_call(reuse, run.clock(x.device) - start)
        return self._guide(out, x.shape[0]), not reuse


class FlowSampler:
    """Cached Euler-CFG sampling of one batch: the :class:`~otcache_core.calibrate.Sampler` protocol.

    ``sigmas`` holds the ``T + 1`` times from 1 (noise) down to 0; ``noise`` is the starting latent.
    ``last_report`` keeps the :class:`~otcache_core.runtime.RunReport` of the latest run.
    """

    def __init__(
        self,
        model: SplitModel,
        noise: torch.Tensor,
        labels: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        cfg_scale: float,
        null_class: int,
        mode: str = "blocks",
    ) -> None:
        # the float32 grid is kept for the Euler update, so that an all-compute run matches a plain
        # Euler sampler on the same grid bit for bit
        self.grid = torch.as_tensor(sigmas, dtype=torch.float32, device=noise.device)
        self.noise, self.sigmas = noise, [float(s) for s in self.grid]
        self.steps = len(self.sigmas) - 1
        self.velocity = CachedVelocity(model, labels, cfg_scale, null_class, mode)
        self.last_report = None

    @property
    def step_sizes(self) -> list[float]:
        return [abs(b - a) for a, b in zip(self.sigmas, self.sigmas[1:])]

    def sample(self, schedule: Schedule, *, policy: StepPolicy | None = None,
               rules: ReuseRule | Sequence[ReuseRule] | None = None) -> torch.Tensor:
        """The final latent under ``schedule`` (reused segments following ``rules``: one rule, or one per
        segment) or ``policy`` (the report lands in ``last_report``)."""
        per_step = None if rules is None or isinstance(rules, ReuseRule) else step_rules(schedule, rules)
        return self.run(schedule.mask(), policy=policy, reuse=per_step or rules).final

    @torch.no_grad()
    def run(
        self,
        mask: Sequence[bool],
        *,
        start: int = 0,
        state: torch.Tensor | None = None,
        stop: int | None = None,
        record: bool = False,
        probe: Collection[int] = (),
        reuse: ReuseRule | Sequence[ReuseRule] | None = None,
        policy: StepPolicy | None = None,
    ) -> SamplingResult:
        """See :class:`~otcache_core.calibrate.Sampler`; ``policy`` decides reuse at runtime instead of
        ``mask`` (give an all-true mask)."""
        T = self.steps
        stop = checked_range(T, mask, start, stop, state)
        x = self.noise if state is None else state
        # steps before `start` are not run; step `start` computes (nothing is cached yet)
        effective = [True] * (start + 1) + list(mask[start + 1 :])
        run = CacheRun(Schedule.from_mask(effective), mode=self.velocity.mode, policy=policy, rules=reuse,
                       sigmas=self.sigmas)
        result = SamplingResult(final=x, model_calls=0, states=[x] if record else None)
        for k in range(start, stop):
            t = self.sigmas[k]
            v, computed = self.velocity(run, k, x, t)
            if computed:
                result.model_calls += 1
                if record or k in probe:
                    result.denoised[k] = x - t * v
                if record:
                    result.outputs[k] = v
            elif k in probe:
                result.model_calls += 1
                result.denoised[k] = x - t * self.velocity.full(x, t)
            x = x + (self.grid[k + 1] - self.grid[k]) * v
            if record:
                result.states.append(x)
        result.final = x
        if record:
            result.step_sizes, result.sigmas = self.step_sizes, list(self.sigmas)
        self.last_report = run.report()
        return result

"""A run-time check of every forecast: extrapolate only where extrapolating has been right.

At a computed step ``k`` that ends a segment of reused steps (the last computed one ``a``, before it
``b``), the run knows for free what its reuse rule stood in with over the segment, and, now that
``q_k`` is computed, what the model's values there were close to: the interpolant ``p`` through
``(sigma_b, q_b), (sigma_a, q_a), (sigma_k, q_k)`` (interpolation, not extrapolation; without ``b`` the
secant of ``a`` and ``k``). Each candidate, the rule and its alternatives from the same history (a lower
order: ``linear`` for the second-order rules; zeroth order: ``hold``), is scored per sample (each row of
a stream's tensor) by the error it would have put into the state, the step-size weighted sum over the
reused steps ``j`` of the segment:

    e_r = sum_j (sigma_j - sigma_{j+1}) mean |f_r(sigma_j) - p(sigma_j)|   over the row's elements,

and the next segment of that stream uses, row by row, the candidate with the smallest ``e_r`` (ties: the
rule). Scoring only the forecast at ``sigma_k`` is not enough: a forecast that overshoots at the end of
a gap may still have been the better stand-in over it, and ``hold``'s lag compounds (on DigitFlux, an
end-point check sent 10-20 % of the samples to ``hold`` and lost 5-6 dB at 12 and 10 of 30 steps).
Without the run's sigma schedule the forecast at ``sigma_k`` itself is scored.

So a sample whose forecasts go wrong falls back instead of compounding, while the others keep
extrapolating; the rule comes back as soon as its forecast is the closest again. Exactness is
untouched: an all-compute run never forecasts. The run's report counts the rows that fell back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from .reuse import HOLD_RULE, LINEAR_RULE, ReuseRule

History = Sequence[tuple["float | None", torch.Tensor]]


def alternatives(rule: ReuseRule) -> tuple[ReuseRule, ...]:
    """The rule and what it may fall back to, highest order first: a second-order rule to ``linear`` and
    ``hold``, a first-order one to ``hold``; ``hold`` and per-step rules have none."""
    if rule.kind == HOLD_RULE.kind or rule.per_step:
        return (rule,)
    return (rule, LINEAR_RULE, HOLD_RULE) if rule.depth >= 3 else (rule, HOLD_RULE)


def _through(points: Sequence[tuple[float, torch.Tensor]], sigma: float) -> torch.Tensor:
    """The polynomial through ``points`` at ``sigma`` (Lagrange form, in float32)."""
    out = None
    for k, (s_k, v_k) in enumerate(points):
        w = 1.0
        for m, (s_m, _) in enumerate(points):
            if m != k:
                w *= (sigma - s_m) / (s_k - s_m)
        out = w * v_k.float() if out is None else out + w * v_k.float()
    return out


def _row_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().flatten(1).mean(dim=1) if a.ndim > 1 else (a.float() - b.float()).abs()


@dataclass
class ForecastCheck:
    """Per-stream state of the check for one run (see the module doc)."""

    margin: float = 2.0
    """How many times closer an alternative must have been than the rule to replace it."""
    pending: dict[Hashable, ReuseRule] = field(default_factory=dict)
    """Streams that stood in since their last computed value, with the rule they stood in with."""
    choice: dict[Hashable, tuple[tuple[ReuseRule, ...], torch.Tensor]] = field(default_factory=dict)
    """Per stream: the candidates and, per row, the index of the one the last check chose."""
    checked: int = 0
    """Rows checked (one per sample and stream at the end of each segment)."""
    fell_back: Counter = field(default_factory=Counter)
    """Rows whose next segment stands in with another candidate, per candidate name."""

    def forecasting(self, key: Hashable, rule: ReuseRule) -> None:
        """Stream ``key`` stood in with ``rule``: check it when its next value is computed."""
        if len(alternatives(rule)) > 1:
            self.pending[key] = rule

    def check(self, key: Hashable, history: History, value: torch.Tensor, sigma: float | None,
              grid: Sequence[float] | None) -> None:
        """Score the forecasts of ``key``'s segment against the computed ``value`` (before it is stored)."""
        rule = self.pending.pop(key, None)
        if rule is None or sigma is None or not history or history[-1][1].shape != value.shape:
            self.choice.pop(key, None)
            return
        candidates = alternatives(rule)
        history = list(history)
        between = [] if grid is None else [(float(grid[j]), float(grid[j]) - float(grid[j + 1]))
                                           for j in range(len(grid) - 1)
                                           if sigma < float(grid[j]) < float(history[-1][0] or sigma)]
        if not between:  # no schedule (or nothing reused in between): the forecast at sigma_k
            errors = torch.stack([_row_error(r.standin(history, sigma, grid=grid), value) for r in candidates])
        else:
            known = [(s, v) for s, v in history[-2:] if s is not None] + [(sigma, value)]
            truth = {s_j: _through(known, s_j) for s_j, _ in between}
            errors = torch.stack([sum(w * _row_error(r.standin(history, s_j, grid=grid), truth[s_j])
                                      for s_j, w in between) for r in candidates])
        errors[1:] *= self.margin  # an alternative must be clearly closer to replace the rule
        best = errors.argmin(dim=0)  # the first of equal errors: the rule itself
        self.checked += int(best.numel())
        for index, count in zip(*torch.unique(best, return_counts=True)):
            if int(index):
                self.fell_back[candidates[int(index)].name] += int(count)
        if bool((best != 0).any()):
            self.choice[key] = (candidates, best)
        else:
            self.choice.pop(key, None)

    def standin(self, key: Hashable, rule: ReuseRule, value: torch.Tensor, history: History, sigma: float,
                grid: Sequence[float] | None) -> torch.Tensor:
        """``value`` (the rule's stand-in) with the rows the last check moved to another candidate replaced."""
        chosen = self.choice.get(key)
        if chosen is None or chosen[0][0] != rule or chosen[1].numel() != (value.shape[0] if value.ndim else 1):
            return value
        candidates, best = chosen
        out = value.clone()
        for index in range(1, len(candidates)):
            rows = (best == index).to(out.device)
            if bool(rows.any()):
                out[rows] = candidates[index].standin(history, sigma, grid=grid)[rows].to(out.dtype)
        return out

    def describe(self) -> str | None:
        """``forecast checks: 3 of 40 rows fell back (hold 2, linear 1)``, or ``None`` if nothing was checked."""
        if not self.checked:
            return None
        total = sum(self.fell_back.values())
        detail = f" ({', '.join(f'{n} {c}' for n, c in sorted(self.fell_back.items()))})" if total else ""
        return f"forecast checks: {total} of {self.checked} rows fell back{detail}"

"""Reference schedules as shortest paths: the lexicographic-minimax (leximax) path with exactly B nodes.

Nodes are steps ``0 .. T`` (``T`` = the end of sampling). An edge ``i -> j`` (``i < j``) means "compute
at ``i``, reuse the cached residual at ``i+1 .. j-1``, compute next at ``j``" (``j = T``: reuse to the
end), with weight ``w(i, j)``, the error of that one cached segment. Edges with ``j = i + 1`` reuse
nothing and weigh 0. A path ``0 = n_0 < ... < n_B = T`` is a schedule with the ``B`` computed steps
``n_0 .. n_{B-1}``.

The leximax path minimises the vector of its edge weights sorted in descending order,
lexicographically: first the worst segment, then the second worst, and so on. Appending the same
weight to two vectors preserves their leximax order, so the optimum over paths ending at ``(j, c)``
(node ``j`` after ``c`` edges) extends an optimum at some ``(i, c - 1)``: dynamic programming over
(node, edge count) is exact.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import OTCacheError, ScheduleError
from .schedule import Schedule, check_budget, check_steps

OBJECTIVES: tuple[str, ...] = ("leximax", "power")


@dataclass(frozen=True)
class ReferencePath:
    """The optimal path: its schedule and the weight of each segment in path order."""

    schedule: Schedule
    segment_errors: tuple[float, ...]
    objective: str

    @property
    def worst_segment(self) -> float:
        return max(self.segment_errors)

    def sorted_errors(self) -> tuple[float, ...]:
        """The leximax key: segment errors in descending order."""
        return tuple(sorted(self.segment_errors, reverse=True))


def edge_weight_matrix(errors: np.ndarray | Sequence[Sequence[float | None]], steps: int) -> np.ndarray:
    """Validate a ``(T+1) x (T+1)`` error matrix; ``None``/NaN mark unmeasured (unusable) edges.

    Entries with ``j <= i + 1`` are ignored and set to 0 on the first off-diagonal (no step reused).
    """
    T = check_steps(steps)
    try:
        raw = [[math.nan if x is None else x for x in row] for row in errors]
        w = np.asarray(raw, dtype=float)
    except (TypeError, ValueError) as exc:
        raise OTCacheError(f"edge errors must be a square matrix of numbers (or null): {exc}") from None
    if w.shape != (T + 1, T + 1):
        raise OTCacheError(f"edge errors must be a {T + 1} x {T + 1} matrix for {T} steps, got {w.shape}")
    finite = w[np.isfinite(w)]
    if finite.size and finite.min() < 0:
        raise OTCacheError("edge errors must be non-negative")
    out = np.full_like(w, np.nan)
    iu = np.triu_indices(T + 1, k=2)
    out[iu] = w[iu]
    idx = np.arange(T)
    out[idx, idx + 1] = 0.0
    out[~np.isfinite(out)] = np.nan  # +inf means forbidden as well
    return out


def solve_reference(
    errors: np.ndarray | Sequence[Sequence[float | None]],
    steps: int,
    budget: int,
    *,
    max_skip: int | None = None,
    objective: str = "leximax",
    gamma: float = 2.0,
) -> ReferencePath:
    """The best path from 0 to ``T`` with exactly ``budget`` computed steps.

    ``max_skip`` bounds the segment length ``j - i`` (``None``: no bound). ``objective="leximax"``
    minimises the descending-sorted vector of segment errors; ``objective="power"`` minimises
    ``sum w(i, j) ** gamma`` (``gamma -> infinity`` approaches leximax). Ties go to the path whose
    predecessors are earliest, so the result is deterministic.
    """
    T = check_steps(steps)
    B = check_budget(budget, T)
    if objective not in OBJECTIVES:
        raise OTCacheError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    K = T if max_skip is None else max_skip
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise OTCacheError(f"max segment length must be a positive integer, got {max_skip!r}")
    if B * K < T:
        raise ScheduleError(
            f"budget {B} cannot cover {T} steps with segments of at most {K} steps; "
            f"use a budget of at least {math.ceil(T / K)} or a larger maximum segment length"
        )
    w = edge_weight_matrix(errors, T)
    if objective == "power":
        if not gamma > 0:
            raise OTCacheError(f"gamma must be positive, got {gamma}")
        parents = _dp_power(w, T, B, K, gamma)
    else:
        parents = _dp_leximax(w, T, B, K)
    nodes = _backtrack(parents, T, B)
    schedule = Schedule(steps=T, compute_steps=tuple(nodes[:-1]))
    seg = tuple(float(w[i, j]) for i, j in zip(nodes, nodes[1:]))
    return ReferencePath(schedule, seg, objective)


def _dp_leximax(w: np.ndarray, T: int, B: int, K: int) -> list[dict[int, int]]:
    """``parents[c][j]`` = predecessor of ``j`` on the leximax-best ``c``-edge path from 0."""
    best: dict[int, tuple[float, ...]] = {0: ()}  # keys stored negated: ascending order = descending weight
    parents: list[dict[int, int]] = [{}]
    for c in range(1, B + 1):
        # node j may be reached after c edges only if the remaining B - c edges can still reach T
        lo, hi = c, T - (B - c)
        nxt: dict[int, tuple[float, ...]] = {}
        par: dict[int, int] = {}
        for j in range(lo, hi + 1):
            for i in range(max(0, j - K), j):
                key = best.get(i)
                if key is None or math.isnan(w[i, j]):
                    continue
                cand = list(key)
                bisect.insort(cand, -float(w[i, j]))
                cand_t = tuple(cand)
                if j not in nxt or cand_t > nxt[j]:  # larger negated tuple = smaller leximax
                    nxt[j], par[j] = cand_t, i
        best = nxt
        parents.append(par)
    if T not in best:
        raise ScheduleError(
            f"no schedule with {B} computed steps uses only measured segments; "
            "measure more edges (larger maximum segment length) or change the budget"
        )
    return parents


def _dp_power(w: np.ndarray, T: int, B: int, K: int, gamma: float) -> list[dict[int, int]]:
    """``parents[c][j]`` for the minimum of ``sum w ** gamma``."""
    cost = np.where(np.isnan(w), np.inf, np.power(np.nan_to_num(w, nan=0.0), gamma))
    best = np.full(T + 1, np.inf)
    best[0] = 0.0
    parents: list[dict[int, int]] = [{}]
    for c in range(1, B + 1):
        nxt = np.full(T + 1, np.inf)
        par: dict[int, int] = {}
        for j in range(c, T - (B - c) + 1):
            i0 = max(0, j - K)
            totals = best[i0:j] + cost[i0:j, j]
            k = int(np.argmin(totals))
            if np.isfinite(totals[k]):
                nxt[j], par[j] = totals[k], i0 + k
        best = nxt
        parents.append(par)
    if not np.isfinite(best[T]):
        raise ScheduleError(
            f"no schedule with {B} computed steps uses only measured segments; "
            "measure more edges (larger maximum segment length) or change the budget"
        )
    return parents


def _backtrack(parents: list[dict[int, int]], T: int, B: int) -> list[int]:
    nodes = [T]
    for c in range(B, 0, -1):
        nodes.append(parents[c][nodes[-1]])
    nodes.reverse()
    return nodes


def path_errors(errors: np.ndarray, schedule: Schedule) -> tuple[float, ...]:
    """The segment errors of any schedule under an error matrix (NaN for unmeasured segments)."""
    w = edge_weight_matrix(errors, schedule.steps)
    return tuple(float(w[i, j]) for i, j in schedule.segments())

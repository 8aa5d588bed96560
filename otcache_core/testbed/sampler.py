"""Rectified-flow sampling for the testbed: time grid, CFG velocity, plain Euler.

Rectified flow (Liu et al., 2022; SD3/FLUX use the same convention)::

    x_t = (1 - t) x0 + t * noise,   t in [0, 1]       (t = 1 is pure noise, t = 0 is data)
    v   = dx_t/dt = noise - x0                       (what the model predicts)

Sampling integrates the ODE ``dx/dt = v(x, t)`` from ``t = 1`` down to ``t = 0``. With the time grid
``1 = t_0 > t_1 > ... > t_T = 0`` the Euler step is ``x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)``.

Classifier-free guidance (Ho & Salimans, 2022) with scale ``w``::

    v = v_uncond + w * (v_cond - v_uncond)

where ``v_uncond`` uses the null class label. Conditional and unconditional rows are evaluated in
*one* batched model call ``[x; x]`` with labels ``[y; null]``, as ComfyUI does; a cache engine that
replaces the model call therefore sees one call per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Timestep shift used by default: ``shift = 1``, the plain uniform grid (see :func:`sigmas`). For the
#: shipped testbed shift hardly matters: class agreement at cfg 4 was 100% for shift 1, 2 and 3 at
#: T = 8 and T = 20 (100 samples each), and the grids look alike, since its flow is nearly straight.
#: The uniform grid keeps step k at t = 1 - k/T, which makes per-step curves easy to read.
DEFAULT_SHIFT = 1.0

#: ``model_fn(x, t, y, step) -> v`` on the batched rows; ``t`` has shape [rows], ``step`` is 0..T-1.
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The time grid: ``steps + 1`` float32 values from 1 down to 0.

    ``t_k = s u_k / (1 + (s - 1) u_k)`` with ``u_k = 1 - k / steps`` and ``s = shift`` (the SD3/FLUX
    shift). ``s > 1`` spends more steps at high noise, ``s < 1`` at low noise, ``s = 1`` is uniform.
    The endpoints stay at exactly 1 and 0 for every ``s``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    u = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
    t = shift * u / (1.0 + (shift - 1.0) * u)
    return t.float()


def _null_class_of(model: object, null_class: int | None) -> int:
    """The unconditional label: given explicitly, or read from ``model.config.null_class``."""
    if null_class is not None:
        return null_class
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "null_class"):
        raise ValueError("pass null_class= when the model has no config.null_class")
    return int(config.null_class)


def velocity(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    t: float | torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    null_class: int | None = None,
) -> torch.Tensor:
    """Guided velocity ``v_u + w (v_c - v_u)`` from one batched call of ``model_fn(x, t, y)``.

    ``model_fn`` is the model itself or any callable with its signature; ``null_class`` defaults to
    ``model_fn.config.null_class``. For ``cfg_scale == 1`` guidance is the identity, so only the
    conditional rows are evaluated.
    """
    null_class = _null_class_of(model_fn, null_class)
    n = x.shape[0]
    t_rows = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
    if cfg_scale == 1.0:
        return model_fn(x, t_rows, labels)
    x_in = torch.cat([x, x], dim=0)
    t_in = torch.cat([t_rows, t_rows], dim=0)
    y_in = torch.cat([labels, torch.full_like(labels, null_class)], dim=0)
    v_cond, v_uncond = model_fn(x_in, t_in, y_in).chunk(2, dim=0)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample_euler(
    model: nn.Module | None,
    noise: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    cfg_scale: float = 4.0,
    *,
    shift: float = DEFAULT_SHIFT,
    model_fn: ModelFn | None = None,
    null_class: int | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Plain Euler sampling of the rectified-flow ODE from ``t = 1`` (``noise``) to ``t = 0``.

    ``x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)`` for ``k = 0..steps-1`` on :func:`sigmas`, with
    ``v`` the CFG velocity of :func:`velocity`. Deterministic given ``noise`` (no randomness inside).

    ``model_fn(x, t, y, step)`` replaces the model call on the batched ``[cond; uncond]`` rows, e.g. a
    cache engine that runs ``embed``/``blocks``/``head`` itself; by default it is ``model(x, t, y)``.
    ``callback(step, x_k, v_k)`` is called after each velocity evaluation (for recording trajectories).
    Returns ``x_T``, the sample, in the data range (about [-1, 1]).
    """
    null = _null_class_of(model, null_class)
    if model_fn is None:
        if model is None:
            raise ValueError("pass a model or a model_fn")
        model_fn = lambda x, t, y, step: model(x, t, y)  # noqa: E731
    grid = sigmas(steps, shift).to(noise.device)
    x = noise.float().clone()
    for k in range(steps):
        v = velocity(lambda xi, ti, yi, k=k: model_fn(xi, ti, yi, k), x, grid[k], labels, cfg_scale, null)
        if callback is not None:
            callback(k, x, v)
        x = x + (grid[k + 1] - grid[k]) * v
    return x


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Map samples from the data range [-1, 1] to image range [0, 1] (clamped): ``(x + 1) / 2``."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

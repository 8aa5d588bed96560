"""Control models (ControlNet, T2I-Adapter) under OTCache: they run only for model calls that compute.

ComfyUI evaluates a cond's control model in ``comfy.samplers._calc_cond_batch``
(``control.get_control(...)``) just before ``model.apply_model``, so neither the ``APPLY_MODEL`` wrapper
nor the block hooks can save its cost by themselves. The evaluation is therefore moved into the model
call, where the compute/reuse decision is made:

* the ``CALC_COND_BATCH`` wrapper hands ``_calc_cond_batch`` shallow copies of the cond dicts whose
  ``control`` is a :class:`DeferredControl` (:func:`defer_controls`). Its ``get_control`` runs nothing
  and returns a :class:`PendingControl` that holds the call's arguments. The user's cond dicts and
  control objects are never modified, and the copies live for one call only;
* the ``APPLY_MODEL`` wrapper decides the call as before and then swaps the pending control for what
  the model must see: when the call computes, the control's own output (``get_control`` with the
  arguments ComfyUI gave it, so computed calls are unchanged bit for bit); when it reuses in ``model``
  mode, nothing (the model does not run); when it reuses in ``blocks`` mode, the output held from the
  last computed call of the same streams (:class:`HeldControls`).

Why hold in ``blocks`` mode: a reused stage returns ``input + residual`` where the residual is the
stage's own change at the last computed step, control additions of its inner blocks included; models
add a control's contribution *after* each block, so the one after a stage's last block lies outside the
residual. Handing the model that step's control output again keeps the whole stage on the same
zeroth-order rule (hold) instead of dropping one block's share of the control.

Only ComfyUI's own control classes are deferred (:func:`deferrable`): their evaluation depends on the
call's arguments and on caches keyed by the hint's size, never on which earlier steps they saw.
Anything else (a custom node's control class, anywhere in a ``previous_controlnet`` chain) runs at every
call as it always did, and the run report says so.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from ..otcache_core.runtime import same_layout

_OWN_CLASS_NAMES = ("ControlNet", "ControlLora", "ControlNetSD35", "T2IAdapter")


def _own_classes() -> tuple[type, ...]:
    import comfy.controlnet

    return tuple(c for c in (getattr(comfy.controlnet, n, None) for n in _OWN_CLASS_NAMES) if isinstance(c, type))


def control_chain(control: Any) -> list[Any]:
    """``control`` and the controls it chains (``previous_controlnet``), outermost first."""
    chain: list[Any] = []
    while control is not None and all(control is not c for c in chain):
        chain.append(control)
        control = getattr(control, "previous_controlnet", None)
    return chain


def deferrable(control: Any) -> bool:
    """Whether every control of the chain is exactly one of ComfyUI's own classes (subclasses may keep state)."""
    own = _own_classes()
    return all(type(c) in own for c in control_chain(control))


def _active(control: Any, t: torch.Tensor) -> bool:
    """Whether ``control`` runs its model at timestep ``t``: its start/end percent range, as ``get_control`` tests it."""
    rng = getattr(control, "timestep_range", None)
    return rng is None or not bool(t[0] > rng[0] or t[0] < rng[1])


class PendingControl:
    """One model call's control output, evaluated on demand (at most once)."""

    def __init__(self, control: Any, args: tuple) -> None:
        self.control = control
        self.args = args  # (x_noisy, t, cond, batched_number, transformer_options), as _calc_cond_batch passed them
        self._resolved = False
        self._value: Any = None

    def resolve(self) -> Any:
        """What ``control.get_control`` returns for the call (a dict of lists of tensors, or ``None``)."""
        if not self._resolved:
            self._value = self.control.get_control(*self.args)
            self._resolved = True
        return self._value

    def evaluations(self) -> int:
        """Control models of the chain that run for this call (those inside their start/end range)."""
        t = self.args[1]
        return sum(_active(c, t) for c in control_chain(self.control))


class DeferredControl:
    """Stands in for a control object inside one ``_calc_cond_batch`` call: ``get_control`` defers."""

    def __init__(self, control: Any) -> None:
        self.control = control

    def get_control(self, *args: Any) -> PendingControl:
        return PendingControl(self.control, args)


def defer_controls(conds: list, foreign: set[str]) -> list:
    """Copies of ``conds`` (a list of cond lists, or ``None``) with deferred controls where allowed.

    One :class:`DeferredControl` per control object, so conds that share a control still batch
    together (``can_concat_cond`` compares controls by identity). Names of control classes that must
    run at every call are added to ``foreign``.
    """
    proxies: dict[int, DeferredControl] = {}
    out = []
    for cond in conds:
        if cond is None:
            out.append(None)
            continue
        copies = []
        for c in cond:
            control = c.get("control")
            if control is None:
                copies.append(c)
            elif deferrable(control):
                proxy = proxies.setdefault(id(control), DeferredControl(control))
                copies.append({**c, "control": proxy})
            else:
                foreign.update(type(x).__name__ for x in control_chain(control))
                copies.append(c)
        out.append(copies)
    return out


def _copy(control: Any) -> Any:
    """A control output whose lists a model may consume (UNets ``pop`` them) without touching ours."""
    return {k: list(v) for k, v in control.items()} if isinstance(control, dict) else control


class HeldControls:
    """``blocks`` mode: the control output of the last computed call of each composition of streams.

    A composition is the ordered tuple of a call's stream keys; a call that computes drops every held
    output that shares a stream with it, so what is held always belongs to the step whose residuals
    the streams hold.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[Hashable, ...], tuple[torch.Tensor, Any]] = {}

    def forget(self, key: tuple[Hashable, ...]) -> None:
        """Drop what is held for ``key`` and for any composition sharing a stream with it."""
        for other in [k for k in self._held if set(k) & set(key)]:
            del self._held[other]

    def store(self, key: tuple[Hashable, ...], like: torch.Tensor, control: Any) -> None:
        self.forget(key)
        self._held[key] = (like, _copy(control))

    def take(self, key: tuple[Hashable, ...], x: torch.Tensor) -> tuple[bool, Any]:
        """``(True, control)`` held for ``key`` with ``x``'s layout, else ``(False, None)``."""
        held = self._held.get(key)
        if held is None or not same_layout(held[0], x):
            return False, None
        return True, _copy(held[1])

    def clear(self) -> None:
        self._held.clear()

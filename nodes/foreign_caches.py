"""Other step caches on a model, recognised by name.

Two caches that each decide which steps to skip corrupt the output, so OTCache Apply refuses a model
that already has one, and a run whose model got one after OTCache Apply turns OTCache off (see
:mod:`.cache_hooks`). Both need to say *which* cache, so the user knows which node to remove.

How each pack patches the model, read in its source and confirmed on tiny real Flux / Wan 2.1 models on
ComfyUI 0.3.64. "Function wrapper" is ``ModelPatcher.set_model_unet_function_wrapper``, the single
``model_options["model_function_wrapper"]`` slot (named below by its class and method, which survive
the module name ComfyUI derives from the folder path); "options" are the patcher's
``model_options["transformer_options"]``:

* **TeaCache** (welltop-cn/ComfyUI-TeaCache, read at 91dff8e): function wrapper
  ``TeaCache.apply_teacache``; inside it ``unittest.mock.patch.multiple`` swaps the diffusion model's
  ``forward_orig`` (Flux, HunyuanVideo, Wan) or ``forward`` (Lumina 2, LTXV, HiDream) for one model
  call. Options ``rel_l1_thresh``, ``coefficients``, ``model_type``, ``cache_device``. Its state stays
  on the diffusion model as attributes (``accumulated_rel_l1_distance``, ``previous_residual``, ...).
* **MagCache** (Zehong-Ma/ComfyUI-MagCache, 47bdd2a): the same way, function wrapper
  ``MagCache.apply_magcache``, ``forward_orig`` (``_forward`` for Qwen-Image) swapped inside it; options
  ``magcache_thresh``, ``mag_ratios``, ``magcache_K``, ``retention_ratio``, ``start_step``,
  ``end_step``. Its **MagCache Calibration** node patches alike (``MagCacheCalibration.apply_magcache``,
  no options) and computes every step to measure MagCache's ratios.
* **TaylorSeer** (philipy1219/ComfyUI-TaylorSeer, 94dc45d): function wrapper
  ``TaylorSeer.apply_taylorseer`` / ``TaylorSeerLite.apply_taylorseer_lite``; inside it
  ``forward_orig`` is swapped (the full TaylorSeer also swaps every block's ``forward``). No options;
  its state (``cache_dic``, ``current``) is set on the diffusion model during a run.
* **First Block Cache** (chengzeyi/Comfy-WaveSpeed, 8253745): function wrapper
  ``ApplyFBCacheOnModel.patch``; inside it the Flux ``forward_orig`` / UNet ``_forward`` is swapped, or
  for other DiTs the block lists are replaced by its ``CachedTransformerBlocks``. No options. It also
  replaces ComfyUI's ``execution.get_output_data`` (process-wide) to free its buffers.
* **cache-dit** (the ComfyUI-CacheDiT nodes of xlite-dev, 1092e11, and Jasonzzt, ab1a144, over the
  ``cache-dit`` package 1.5.3): keyed wrappers ``cache_dit_turbo`` (OUTER_SAMPLE, DIFFUSION_MODEL),
  ``wan_cache`` and ``ltx2_cache`` (OUTER_SAMPLE), with options of the same names. At the first run
  their OUTER_SAMPLE wrapper assigns the diffusion model's ``forward`` as an instance attribute
  (``_enable_lightweight_cache`` / ``_enable_wan_cache`` / ``_enable_ltx2_cache``'s ``cached_forward``;
  the original kept in ``_original_forward`` / ``_original_forward_wan``). That replacement stays on
  the shared diffusion model after the node is removed. cache-dit's own ``BlockAdapter`` path fails on
  ComfyUI's Flux (no transformer reference) and falls back to it; nothing of it needs a GPU.
* **EasyCache** and **LazyCache** (ComfyUI's own, comfy_extras/nodes_easycache.py): keyed wrappers
  ``easycache`` (OUTER_SAMPLE, CALC_COND_BATCH, DIFFUSION_MODEL) / ``lazycache`` (OUTER_SAMPLE,
  PREDICT_NOISE); option ``easycache`` holding an ``EasyCacheHolder`` / ``LazyCacheHolder``.
* **LeMiCa**: the snapshot of UnicomAI/LeMiCa read here (2025-10) has no ComfyUI nodes; its authors'
  ``ComfyUI-LeMiCa`` folder is in the fork scruffynerf/LeMiCa (498c89b). Function wrapper
  ``Lemica.apply_lemica``; ``forward_orig`` (Wan), ``forward`` (Qwen-Image) or ``_forward`` (Z-Image)
  swapped inside it; options ``bool_list``, ``num_steps``, ``model_type``, ``cache_device``.

None of them uses ``object_patches`` or ``patches_replace`` for caching, and packs that swap the forward
inside a model function wrapper cannot be seen on the diffusion model between runs: the wrapper (its
class and method, which survive the folder name ComfyUI gives the module) is what names them. A
state attribute left on the diffusion model by an earlier run is not a cache that is active now; a
replaced ``forward`` is.

Unknown packs: a wrapper key, a model function wrapper, a block replacement, an object patch or a
replaced forward whose name contains ``cache`` is reported as an unnamed step cache, so a new pack
following the common naming is still caught. OTCache's own patches (keys ``otcache...``, classes of
this package) are never reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

OWN_KEY_PREFIX = "otcache"
"""Every key OTCache itself adds to wrappers and transformer_options starts with this."""
_OWN_PACKAGE = __name__.rsplit(".", 2)[0]
"""The pack's root package (ComfyUI names it after the folder path): objects from it are our own patches."""

_FORWARD_ATTRS = ("forward", "forward_orig", "_forward")
"""Methods of a diffusion model that packs replace; an instance attribute of that name is a replacement."""


@dataclass(frozen=True)
class CacheSignature:
    """How one pack's step cache shows on a ``ModelPatcher``: any one of these marks names it."""

    name: str
    """What messages call it, e.g. ``TeaCache``."""
    source: str
    """Where it comes from (repository or ComfyUI), for the user who does not recognise the name."""
    wrapper_keys: tuple[str, ...] = ()
    """Keys of its ``add_wrapper_with_key`` wrappers (any wrapper type)."""
    option_keys: tuple[str, ...] = ()
    """transformer_options keys that together (all present) mark it."""
    also_sets: tuple[str, ...] = ()
    """Other transformer_options keys it sets: explained by it, never reported as an unnamed cache."""
    option_types: tuple[tuple[str, str], ...] = ()
    """(transformer_options key, class name of the value) pairs; one match marks it."""
    function_wrappers: tuple[tuple[str, str], ...] = ()
    """(last part of the module name, qualified-name prefix) of its model function wrapper."""
    forwards: tuple[str, ...] = ()
    """Qualified-name prefixes of a function it assigns as the diffusion model's own ``forward``."""


SIGNATURES: tuple[CacheSignature, ...] = (
    CacheSignature(
        "TeaCache", "welltop-cn/ComfyUI-TeaCache",
        option_keys=("rel_l1_thresh", "coefficients"), also_sets=("model_type", "cache_device"),
        function_wrappers=(("nodes", "TeaCache.apply_teacache."),),
    ),
    CacheSignature(
        "MagCache", "Zehong-Ma/ComfyUI-MagCache",
        option_keys=("magcache_thresh", "mag_ratios"),
        also_sets=("magcache_K", "retention_ratio", "start_step", "end_step"),
        function_wrappers=(("nodes", "MagCache.apply_magcache."),),
    ),
    CacheSignature(
        "MagCache Calibration", "Zehong-Ma/ComfyUI-MagCache",
        function_wrappers=(("nodes_calibration", "MagCacheCalibration.apply_magcache."),),
    ),
    CacheSignature(
        "TaylorSeer", "philipy1219/ComfyUI-TaylorSeer",
        function_wrappers=(("nodes", "TaylorSeer.apply_taylorseer."),
                           ("nodes", "TaylorSeerLite.apply_taylorseer_lite.")),
    ),
    CacheSignature(
        "First Block Cache", "chengzeyi/Comfy-WaveSpeed",
        function_wrappers=(("fbcache_nodes", "ApplyFBCacheOnModel.patch."),),
    ),
    CacheSignature(
        "cache-dit", "ComfyUI-CacheDiT (xlite-dev, Jasonzzt)",
        wrapper_keys=("cache_dit_turbo", "wan_cache", "ltx2_cache"),
        option_types=(("cache_dit_turbo", "CacheDiTConfig"), ("wan_cache", "WanCacheConfig"),
                      ("ltx2_cache", "LTX2CacheConfig")),
        forwards=("_enable_lightweight_cache.", "_enable_wan_cache.", "_enable_ltx2_cache."),
    ),
    CacheSignature(
        "EasyCache", "ComfyUI",
        wrapper_keys=("easycache",),
        option_types=(("easycache", "EasyCacheHolder"),),
    ),
    CacheSignature(
        "LazyCache", "ComfyUI",
        wrapper_keys=("lazycache",),
        option_types=(("easycache", "LazyCacheHolder"),),
    ),
    CacheSignature(
        "LeMiCa", "ComfyUI-LeMiCa",
        option_keys=("bool_list", "num_steps"), also_sets=("model_type", "cache_device"),
        function_wrappers=(("nodes", "Lemica.apply_lemica."),),
    ),
)


@dataclass(frozen=True)
class ForeignCache:
    """One other step cache found on a model."""

    name: str
    """The pack's cache by name (``TeaCache``), or :data:`UNNAMED` for the fallback."""
    source: str
    """Its repository, ``ComfyUI``, or ``unknown``."""
    evidence: str
    """What showed it, e.g. ``its model function wrapper``."""

    @property
    def label(self) -> str:
        """What a short message calls it: the name, or for an unnamed cache what showed it."""
        return self.name if self.name != UNNAMED else f"{UNNAMED}: {self.evidence}"

    def describe(self) -> str:
        """``TeaCache (welltop-cn/ComfyUI-TeaCache: its model function wrapper)``."""
        if self.name == UNNAMED:
            return f"{UNNAMED} ({self.evidence})"
        return f"{self.name} ({self.source}: {self.evidence})"


UNNAMED = "a step cache of unknown origin"


def labels(found: Iterable[ForeignCache]) -> str:
    """The caches for a short message, in order, each once: ``TeaCache, cache-dit``."""
    return ", ".join(dict.fromkeys(f.label for f in found))


def find_foreign_caches(patcher: Any, model_options: dict | None = None) -> list[ForeignCache]:
    """Other step caches on ``patcher`` (a ``ModelPatcher``), each pack once, named where known.

    Reads the patcher's ``model_options`` (or ``model_options`` when given: a sampling run's copy,
    where ComfyUI has merged the patcher's wrappers into ``transformer_options["wrappers"]``), its
    ``wrappers`` and ``object_patches``, and the diffusion model's own replaced ``forward``.
    """
    options = model_options if model_options is not None else getattr(patcher, "model_options", {}) or {}
    to = options.get("transformer_options") or {}
    wrapper_keys = set(_wrapper_keys(to.get("wrappers")))
    wrapper_keys.update(_wrapper_keys(getattr(patcher, "wrappers", None)))
    function_wrapper = options.get("model_function_wrapper")
    forwards = dict(_replaced_forwards(patcher))

    found: dict[str, ForeignCache] = {}
    claimed: set[str] = set()  # marks a named signature explains: the fallback does not report them again
    for sig in SIGNATURES:
        evidence = _match(sig, wrapper_keys, to, function_wrapper, forwards, claimed)
        if evidence:
            found.setdefault(sig.name, ForeignCache(sig.name, sig.source, evidence))
    for evidence in _unnamed(wrapper_keys, to, function_wrapper, forwards, patcher, claimed):
        found.setdefault(evidence, ForeignCache(UNNAMED, "unknown", evidence))
    return list(found.values())


# --------------------------------------------------------------------------------------------------


def _wrapper_keys(wrappers: Any) -> Iterator[str]:
    """Keys of ``{wrapper_type: {key: [fn, ...]}}`` (the patcher's or a run's merged wrappers)."""
    if not isinstance(wrappers, dict):
        return
    for keyed in wrappers.values():
        if isinstance(keyed, dict):
            for key, fns in keyed.items():
                if isinstance(key, str) and fns:
                    yield key


def _qualname(obj: Any) -> str:
    fn = getattr(obj, "__func__", obj)  # bound methods: the function
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _module(obj: Any) -> str:
    fn = getattr(obj, "__func__", obj)
    return getattr(fn, "__module__", None) or type(fn).__module__ or ""


def _module_tail(obj: Any) -> str:
    """The module name from the pack folder on: ComfyUI names a pack's modules after the folder's
    full path, whose parent folders (say ``~/.cache/...``) say nothing about the pack."""
    return re.split(r"[\\/]", _module(obj))[-1]


def _is_own(obj: Any) -> bool:
    module = _module(obj)
    return module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + ".")


def _replaced_forwards(patcher: Any) -> Iterator[tuple[str, Any]]:
    """(attribute, function) for each forward method the diffusion model carries as an instance attribute.

    A module's methods live on its class; an instance attribute of the same name was put there by
    someone else and is what every call runs (``unittest.mock`` swaps show only during a model call).
    """
    dm = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    own = vars(dm) if dm is not None and hasattr(dm, "__dict__") else {}
    for attr in _FORWARD_ATTRS:
        if attr in own and callable(own[attr]) and not _is_own(own[attr]):
            yield attr, own[attr]


def _match(sig: CacheSignature, wrapper_keys: set[str], to: dict, function_wrapper: Any,
           forwards: dict[str, Any], claimed: set[str]) -> str | None:
    """What marks ``sig`` on the model (``None``: nothing); records the marks it explains in ``claimed``."""
    marks = []
    keys = [k for k in sig.wrapper_keys if k in wrapper_keys]
    if keys:
        marks.append(f"wrapper key {', '.join(map(repr, keys))}")
        claimed.update(f"wrapper:{k}" for k in keys)
    typed = [k for k, cls in sig.option_types if type(to.get(k)).__name__ == cls]
    if sig.option_keys and all(k in to for k in sig.option_keys):
        typed = [*typed, *sig.option_keys]
    if typed:
        marks.append(f"model option {', '.join(map(repr, dict.fromkeys(typed)))}")
        claimed.update(f"option:{k}" for k in (*typed, *sig.also_sets))
    if function_wrapper is not None and any(
            _module_tail(function_wrapper).rsplit(".", 1)[-1] == tail and _qualname(function_wrapper).startswith(prefix)
            for tail, prefix in sig.function_wrappers):
        marks.append("its model function wrapper")
        claimed.add("function_wrapper")
    replaced = [a for a, fn in forwards.items() if any(_qualname(fn).startswith(p) for p in sig.forwards)]
    if replaced:
        marks.append(f"the diffusion model's {', '.join(replaced)} replaced, which stays after its node is removed "
                     "(reload the model to drop it)")
        claimed.update(f"forward:{a}" for a in replaced)
    return "; ".join(marks) or None


_CACHE_WORDS = ("cache", "lemica", "taylorseer")
"""Words that mark an unknown patch as a step cache (``cache`` covers teacache, magcache, fbcache, ...)."""


def _looks_like_cache(name: str) -> bool:
    return any(word in name.lower() for word in _CACHE_WORDS)


def _name(obj: Any) -> str:
    """``<pack folder>.<module>.<qualified name>`` of a function or callable object."""
    return f"{_module_tail(obj)}.{_qualname(obj)}"


def _unnamed(wrapper_keys: set[str], to: dict, function_wrapper: Any, forwards: dict[str, Any], patcher: Any,
             claimed: set[str]) -> Iterator[str]:
    """Evidence of step caches no signature names: patches of other owners with a cache-like name."""
    for key in sorted(wrapper_keys):
        if f"wrapper:{key}" not in claimed and not key.startswith(OWN_KEY_PREFIX) and _looks_like_cache(key):
            yield f"wrapper key {key!r}"
    for key in sorted(map(str, to)):
        if f"option:{key}" not in claimed and not key.startswith(OWN_KEY_PREFIX) and _looks_like_cache(key) \
                and key not in ("cache_device",):  # a device choice, set by several packs
            yield f"model option {key!r}"
    if function_wrapper is not None and "function_wrapper" not in claimed and not _is_own(function_wrapper) \
            and _looks_like_cache(_name(function_wrapper)):
        yield f"model function wrapper {_name(function_wrapper)}"
    for attr, fn in forwards.items():
        if f"forward:{attr}" not in claimed and _looks_like_cache(_name(fn)):
            yield f"the diffusion model's {attr} replaced by {_name(fn)}"
    for kind, replacements in ((to.get("patches_replace") or {}).items()):
        if not isinstance(replacements, dict):
            continue
        for key, fn in replacements.items():
            if not _is_own(fn) and _looks_like_cache(_name(fn)):
                yield f"{kind} replacement {key} by {_name(fn)}"
    for name, value in sorted((getattr(patcher, "object_patches", None) or {}).items()):
        if not _is_own(value) and _looks_like_cache(_name(value)):
            yield f"object patch {name} by {_name(value)}"

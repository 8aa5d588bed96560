"""Other step caches on the same model, recognised by name, in both orders, with their real nodes.

Each pack's own node class patches a tiny real model, exactly as a workflow would run it. Packs come
from ``$OTCACHE_PEER_PACKS/<owner+repo>`` (fetched outside the repository; a test skips with what to
fetch when one is missing), ComfyUI's own EasyCache and LazyCache from the ComfyUI checkout. Every pack
listed here loads on ComfyUI 0.3.64 (a125cd84), the cache-dit nodes with ``cache-dit`` 1.5.3 from PyPI,
so none is tested through its patch keys alone.

* before: the other cache's node first, then OTCache Apply, which refuses and names the pack;
* after: OTCache Apply first, the other cache's node on its output: the run warns and names the pack,
  OTCache reuses nothing, and the image is the other cache's own (bit-identical to it alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

STEPS = 10


@dataclass(frozen=True)
class Pack:
    """One other step cache: where its node comes from and how a workflow would set it."""

    id: str
    name: str
    """What OTCache's messages must call it."""
    node: str
    """Its node id in the pack's ``NODE_CLASS_MAPPINGS`` (or ComfyUI's own class name)."""
    repo: str | None
    """``owner+repo[/folder]`` under ``$OTCACHE_PEER_PACKS``; ``None``: ComfyUI's own node."""
    inputs: dict[str, Any] = field(default_factory=dict)
    """Widget values that differ from the node's defaults (a tiny model needs faster caching)."""
    family: str = "flux"
    steps: int = STEPS


PACKS = (
    Pack("teacache", "TeaCache", "TeaCache", "welltop-cn+ComfyUI-TeaCache",
         {"model_type": "flux", "cache_device": "cpu"}),
    Pack("magcache", "MagCache", "MagCache", "Zehong-Ma+ComfyUI-MagCache", {"model_type": "flux"}),
    Pack("magcache_calibration", "MagCache Calibration", "MagCacheCalibration", "Zehong-Ma+ComfyUI-MagCache",
         {"model_type": "flux_calibration"}),
    Pack("taylorseer", "TaylorSeer", "TaylorSeer", "philipy1219+ComfyUI-TaylorSeer",
         {"fresh_threshold": 3, "max_order": 1, "first_enhance": 1}),
    Pack("taylorseer_lite", "TaylorSeer", "TaylorSeerLite", "philipy1219+ComfyUI-TaylorSeer",
         {"fresh_threshold": 3, "max_order": 1, "first_enhance": 1}),
    Pack("first_block_cache", "First Block Cache", "ApplyFBCacheOnModel", "chengzeyi+Comfy-WaveSpeed",
         {"residual_diff_threshold": 0.5}),
    Pack("cache_dit_xlite", "cache-dit", "CacheDiT_Model_Optimizer", "xlite-dev+ComfyUI-CacheDiT",
         {"print_summary": False}),
    Pack("cache_dit_jasonzzt", "cache-dit", "CacheDiT_Model_Optimizer", "Jasonzzt+ComfyUI-CacheDiT",
         {"print_summary": False}),
    Pack("cache_dit_wan_xlite", "cache-dit", "WanCacheOptimizer", "xlite-dev+ComfyUI-CacheDiT",
         {"print_summary": False}, family="wan21_t2v"),
    Pack("cache_dit_wan_jasonzzt", "cache-dit", "WanCacheOptimizer", "Jasonzzt+ComfyUI-CacheDiT",
         {"print_summary": False}, family="wan21_t2v"),
    Pack("easycache", "EasyCache", "EasyCacheNode", None,
         {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False}),
    Pack("lazycache", "LazyCache", "LazyCacheNode", None,
         {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False}),
    # LeMiCa's ComfyUI nodes are the ComfyUI-LeMiCa folder of the repository; it insists on a
    # 50-entry sigma list (49 steps) and a budget from its table.
    Pack("lemica", "LeMiCa", "Lemica", "scruffynerf+LeMiCa/ComfyUI-LeMiCa",
         {"model_type": "wan2.1_t2v_1.3B", "lemica_budget": 14, "cache_device": "cpu"},
         family="wan21_t2v", steps=49),
)


@pytest.fixture(autouse=True)
def quiet_peer_logs():
    """The cache-dit nodes log at INFO and print tracebacks of their own fallbacks: keep the output short."""
    loggers = [logging.getLogger(n) for n in ("ComfyUI-CacheDiT", "ComfyUI-CacheDiT-Wan", "ComfyUI-CacheDiT-LTX2")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def node_class(peer_pack, pack: Pack) -> type:
    if pack.repo is None:
        from comfy_extras import nodes_easycache

        return getattr(nodes_easycache, pack.node)
    return peer_pack(pack.repo).NODE_CLASS_MAPPINGS[pack.node]


def _defaults(cls: type) -> dict[str, Any]:
    """A V1 node's required widget values at their defaults (a combo's first choice), as the UI sends them."""
    values = {}
    for name, spec in cls.INPUT_TYPES()["required"].items():
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            values[name] = options.get("default", kind[0])
        elif "default" in options:
            values[name] = options["default"]
    return values


def run_node(cls: type, model, inputs: dict[str, Any]):
    """The node's MODEL output for ``model``: V1 (``FUNCTION``) or V3 (``execute``), as ComfyUI calls them."""
    if hasattr(cls, "FUNCTION"):
        out = getattr(cls(), cls.FUNCTION)(model=model, **{**_defaults(cls), **inputs})
    else:
        out = cls.execute(model, **inputs)
    return out.result[0] if hasattr(out, "result") else out[0]


def plan_for(core, steps: int):
    """Compute every third step and the last: plenty of reuse for OTCache to give up."""
    schedule = core.schedule.Schedule.from_steps(sorted(set(range(0, steps, 3)) | {steps - 1}), steps)
    return core.plan.SchedulePlan.from_schedule(schedule, label="test")


def sample(m, patcher, steps: int) -> torch.Tensor:
    import comfy.sample

    latent = m.make_latent()
    return comfy.sample.sample(patcher, m.noise(latent, 3), steps, 3.0, "euler", "simple", m.positive(), m.negative(),
                               latent, seed=3, disable_pbar=True)


def apply_otcache(otcache_pack, model, plan, mode: str):
    return otcache_pack.nodes.apply_node.apply_otcache(model, plan, mode)


@pytest.mark.parametrize("pack", PACKS, ids=[p.id for p in PACKS])
def test_otcache_apply_refuses_a_model_that_has_the_cache_and_names_it(otcache_pack, core, tiny, peer_pack, pack):
    cls = node_class(peer_pack, pack)
    m = tiny.build(pack.family)  # a fresh model: several packs leave state on the diffusion model
    cached = run_node(cls, m.patcher, pack.inputs)
    with pytest.raises(core.errors.OTCacheError) as refused:
        apply_otcache(otcache_pack, cached, plan_for(core, pack.steps), "auto")
    message = str(refused.value)
    assert f"already has another step cache: {pack.name} (" in message
    assert message.endswith("keep either OTCache or it, not both")


@pytest.mark.parametrize("mode", ["model", "blocks"])
@pytest.mark.parametrize("pack", PACKS, ids=[p.id for p in PACKS])
def test_the_cache_added_after_otcache_turns_it_off_and_its_own_output_stands(otcache_pack, core, tiny, peer_pack,
                                                                              reports, caplog, pack, mode):
    cls = node_class(peer_pack, pack)
    alone = tiny.build(pack.family)
    expected = sample(alone, run_node(cls, alone.patcher, pack.inputs), pack.steps)

    m = tiny.build(pack.family)
    both = run_node(cls, apply_otcache(otcache_pack, m.patcher, plan_for(core, pack.steps), mode), pack.inputs)
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        out = sample(m, both, pack.steps)

    stopped = f"another step cache is active on this model ({pack.name})"
    assert any(stopped in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    report = reports[-1]
    assert any(n.startswith(f"caching stopped: {stopped}") for n in report.notes)
    assert f"caching stopped: {stopped}" in report.line()
    assert report.reused == [] and report.calls_reused == 0
    assert torch.equal(out, expected)


def test_a_replaced_forward_left_by_cache_dit_after_its_node_is_gone_is_refused(otcache_pack, core, tiny, peer_pack):
    """cache-dit's nodes assign the shared diffusion model's ``forward`` at their first run; it stays there
    when the workflow drops the node but keeps the loaded model."""
    pack = next(p for p in PACKS if p.id == "cache_dit_jasonzzt")
    m = tiny.build(pack.family)
    sample(m, run_node(node_class(peer_pack, pack), m.patcher, pack.inputs), STEPS)
    with pytest.raises(core.errors.OTCacheError, match=r"cache-dit .*forward replaced.*reload the model"):
        apply_otcache(otcache_pack, m.patcher, plan_for(core, STEPS), "auto")


def test_an_unknown_cache_is_refused_by_what_shows_it(otcache_pack, core, tiny):
    """A pack no signature names, keyed like most caches: the fallback still catches it and says how."""
    import comfy.patcher_extension as pe

    m = tiny.build("flux")
    patched = m.patcher.clone()
    passthrough = lambda executor, *args, **kwargs: executor(*args, **kwargs)  # noqa: E731
    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "my_step_cache", passthrough)
    unknown = r"a step cache of unknown origin \(wrapper key 'my_step_cache'\)"
    with pytest.raises(core.errors.OTCacheError, match=unknown):
        apply_otcache(otcache_pack, patched, plan_for(core, STEPS), "auto")


@pytest.mark.parametrize(("family", "mode"), [("flux", "blocks"), ("flux", "model"), ("lumina2", "blocks")])
def test_common_comfyui_patches_and_otcache_itself_are_not_taken_for_a_cache(otcache_pack, core, tiny, reports,
                                                                             family, mode):
    """A LoRA weight patch, ModelSamplingFlux / RescaleCFG, and OTCache Apply twice (its own wrappers, dit
    block replacements, Lumina 2's object-patched layers): none is another step cache."""
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux, RescaleCFG

    m = tiny.build(family)
    patched = m.patcher.clone()
    key = next(k for k in patched.model_state_dict() if k.endswith(".weight") and "diffusion_model." in k)
    weight = patched.model_state_dict()[key]
    patched.add_patches({key: (torch.full_like(weight, 1e-3),)}, strength_patch=1.0)  # a LoRA-style diff patch
    if family == "flux":
        patched = ModelSamplingFlux().patch(patched, max_shift=1.15, base_shift=0.5, width=64, height=64)[0]
    patched = RescaleCFG().patch(patched, multiplier=0.7)[0]

    plan = plan_for(core, STEPS)
    twice = apply_otcache(otcache_pack, apply_otcache(otcache_pack, patched, plan, mode), plan, mode)
    assert otcache_pack.nodes.foreign_caches.find_foreign_caches(twice) == []
    sample(m, twice, STEPS)
    report = reports[-1]
    assert report.reused and not any("another step cache" in n for n in report.notes)

"""The tiny real ComfyUI models sample sanely, and the pack loads like a custom node.

These tests check the test harness itself: if they fail, every caching test
built on ``tiny_models`` is meaningless.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from .tiny_models import DIT_FAMILIES, FAMILIES, TinyModel

STEPS = 6
CFG = 3.0
#: Generous bound: latents leave the model through process_latent_out, which
#: scales by up to ~1/0.13 (SDXL format); anything above this is a blow-up.
MAX_ABS = 1e3

def _latent(m: TinyModel) -> torch.Tensor:
    # The benchmark model is meant for larger latents; keep its test small anyway.
    return m.make_latent(1, 16, 16) if m.family == "flux_bench" else m.make_latent()


def _sample(m: TinyModel, latent: torch.Tensor, cfg: float, patcher=None, seed: int = 7) -> torch.Tensor:
    """Run ComfyUI's own sampling entry point (what KSampler calls)."""
    import comfy.sample

    return comfy.sample.sample(
        patcher if patcher is not None else m.patcher, m.noise(latent, seed), STEPS, cfg,
        "euler", "simple", m.positive(), m.negative(), latent, seed=seed, disable_pbar=True)


def _check_sane(out: torch.Tensor, latent: torch.Tensor) -> None:
    assert out.shape == latent.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() < MAX_ABS
    assert out.abs().mean() > 1e-3, "output is (near) zero"
    assert not torch.equal(out, latent), "sampling left the latent unchanged"


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_finite_deterministic_and_moves(tiny_model, family: str) -> None:
    m = tiny_model(family)
    latent = _latent(m)
    first = _sample(m, latent, CFG)
    second = _sample(m, latent, CFG)
    _check_sane(first, latent)
    assert torch.equal(first, second), "two identical runs differ"


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_cfg_1(tiny_model, family: str) -> None:
    """cfg = 1 skips the negative prompt: a different, still sane result."""
    m = tiny_model(family)
    latent = _latent(m)
    out = _sample(m, latent, 1.0)
    _check_sane(out, latent)
    assert not torch.equal(out, _sample(m, latent, CFG))


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_deterministic_per_seed(tiny, family: str) -> None:
    a = tiny.build(family, seed=3).patcher.model.diffusion_model.state_dict()
    b = tiny.build(family, seed=3).patcher.model.diffusion_model.state_dict()
    c = tiny.build(family, seed=4).patcher.model.diffusion_model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


def _record_block_changes(m: TinyModel, patcher) -> dict[tuple[str, int], list[float]]:
    """Wrap every dit block; record |out - in| / |in| of the image stream per call."""
    changes: dict[tuple[str, int], list[float]] = {}

    def make(key: tuple[str, int]):
        def replacement(args: dict, extra: dict) -> dict:
            before = args["img"].clone()  # Flux blocks may modify inputs in place
            out = extra["original_block"](args)
            changes.setdefault(key, []).append(float((out["img"] - before).norm() / before.norm()))
            return out
        return replacement

    for kind, count in (("double_block", m.double_blocks), ("single_block", m.single_blocks)):
        for i in range(count):
            patcher.set_model_patch_replace(make((kind, i)), "dit", kind, i)
    return changes


@pytest.mark.parametrize("family", DIT_FAMILIES)
def test_every_dit_block_changes_the_hidden_state(tiny_model, family: str) -> None:
    """Random gates keep blocks far from identity, so block caching is observable."""
    m = tiny_model(family)
    patcher = m.patcher.clone()
    changes = _record_block_changes(m, patcher)
    latent = _latent(m)
    out = _sample(m, latent, CFG, patcher=patcher)
    assert torch.equal(out, _sample(m, latent, CFG)), "a pass-through replacement changed the result"
    assert len(changes) == m.total_blocks
    for key, values in changes.items():
        assert len(values) == STEPS, f"{key}: called {len(values)} times"  # cond+uncond batched
        assert all(0.01 < v < 10.0 for v in values), f"{key}: relative change {values}"


def test_lumina2_layers_take_an_object_patch(tiny_model) -> None:
    """Lumina2 has no dit replacement; a per-layer forward object patch works."""
    m = tiny_model("lumina2")
    patcher = m.patcher.clone()
    layers = patcher.get_model_object("diffusion_model.layers")
    changes: dict[int, list[float]] = {}

    def make(i: int, original):
        def forward(x, *args, **kwargs):
            out = original(x, *args, **kwargs)
            changes.setdefault(i, []).append(float((out - x).norm() / x.norm()))
            return out
        return forward

    for i in range(m.double_blocks):
        patcher.add_object_patch(f"diffusion_model.layers.{i}.forward", make(i, layers[i].forward))
    latent = _latent(m)
    out = _sample(m, latent, CFG, patcher=patcher)
    assert sorted(changes) == list(range(m.double_blocks))
    assert all(len(v) == STEPS and all(0.01 < c < 10.0 for c in v) for v in changes.values())
    # The patch belongs to the clone: sampling with the original patcher
    # restores the layers, gives the same result and records nothing.
    assert torch.equal(out, _sample(m, latent, CFG))
    assert all(len(v) == STEPS for v in changes.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_layout(tiny_model, family: str) -> None:
    m = tiny_model(family)
    lat = m.make_latent(2, 8, 12)
    assert lat.shape[0] == 2 and lat.shape[1] == m.latent_channels and lat.shape[-2:] == (8, 12)
    assert lat.ndim == (5 if (m.video or family == "qwen_image") else 4)
    if m.video:
        assert m.make_latent(1, 8, 8, frames=3).shape[2] == 3
    else:
        with pytest.raises(ValueError):
            m.make_latent(1, 8, 8, frames=2)


def test_unknown_family_is_named(tiny) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        tiny.build("sdxl_turbo_9000")


# --------------------------------------------------------------------------
# Loading the pack the way ComfyUI does
# --------------------------------------------------------------------------

def test_pack_loader_keeps_comfyui_nodes_module(pack_loader, tmp_path: Path, comfyui_root: Path) -> None:
    """A placeholder pack with its own ``nodes`` subpackage loads as a package."""
    pack = tmp_path / "placeholder_pack"
    (pack / "nodes").mkdir(parents=True)
    (pack / "nodes" / "__init__.py").write_text("WHO = 'pack nodes'\n")
    (pack / "__init__.py").write_text(
        "from .nodes import WHO\nNODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n")
    module = pack_loader(pack, "placeholder_pack_for_test")
    try:
        assert module.WHO == "pack nodes"
        assert module.__path__ == [str(pack)]
        assert sys.modules["placeholder_pack_for_test.nodes"].WHO == "pack nodes"
        assert Path(sys.modules["nodes"].__file__).resolve() == comfyui_root / "nodes.py"
    finally:
        for name in [n for n in sys.modules if n.startswith("placeholder_pack_for_test")]:
            del sys.modules[name]


def test_otcache_pack_imports_as_custom_node(otcache_pack, comfyui_root: Path) -> None:
    """The real repository root, once it has an ``__init__.py``."""
    assert Path(otcache_pack.__path__[0]).resolve() == Path(__file__).resolve().parents[2]
    assert Path(sys.modules["nodes"].__file__).resolve() == comfyui_root / "nodes.py"
    exported = hasattr(otcache_pack, "NODE_CLASS_MAPPINGS") or hasattr(otcache_pack, "comfy_entrypoint")
    assert exported, "the pack exports neither NODE_CLASS_MAPPINGS nor comfy_entrypoint"

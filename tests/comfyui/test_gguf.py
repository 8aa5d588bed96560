"""GGUF-quantized models with OTCache: loaded by the ComfyUI-GGUF pack's UNet loader, as most FLUX and Wan
users on consumer GPUs run them.

A Flux and a Wan (``gguf_models.py``: the tiny Wan of the test server, and the smallest Flux ComfyUI's
detection builds) are written to GGUF as Q8_0 and as a K-quant (Q6_K) with the ``gguf`` package, loaded
by the pack's ``UnetLoaderGGUF`` (which dequantizes the weights at every model call through its own
layer classes and patches LoRAs at dequantization time), then run through OTCache Apply in both modes
and through OTCache Calibrate: an all-compute schedule is bit-identical to the unpatched GGUF model, a
schedule is applied as scheduled, a calibration is saved, listed and reused, and a LoRA before or
after Apply stays exact (a GGUF + LoRA order gave another step cache a ``NoneType`` error).

Needs ``$OTCACHE_PEER_PACKS/city96+ComfyUI-GGUF`` (795e451 loads on ComfyUI a125cd84) and the ``gguf``
package; skipped with the reason without them. The Flux costs: about 4-15 s per model call on one CPU
thread (the pack dequantizes 391 M weights each call), so its runs are 2 steps at cfg 1.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from . import gguf_models as G
from .test_apply_runtime import BlockCounter, apply, hooks, plan_for, sample  # noqa: F401  (hooks: a fixture)
from .tiny_loras import save_lora

PACK = "city96+ComfyUI-GGUF"
MODES = ("blocks", "model")
WAN_STEPS, FLUX_STEPS = 10, 2
PARTIAL = [0, 1, 3, 6, 9]
FAMILY_QTYPES = [(family, qtype) for family in ("wan", "flux") for qtype in G.QTYPES]
LORA = "otcache_test_gguf_wan.safetensors"
REFERENCE_WEIGHT = {"wan": "blocks.1.self_attn.q.weight", "flux": "double_blocks.0.img_attn.qkv.weight"}
"""One quantized weight per model, kept unquantized to compare with what the loader dequantizes."""


@pytest.fixture(scope="module")
def gguf():
    return pytest.importorskip("gguf", reason="the gguf package (PyPI) writes the test models: pip install gguf")


@pytest.fixture(scope="module")
def gguf_pack(peer_pack, gguf):
    return peer_pack(PACK)


@pytest.fixture(scope="module")
def gguf_models(gguf_pack, tmp_path_factory):
    """``gguf_models(family, qtype) -> (GGUFFile, TinyModel)``: written once per module, loaded by the pack's
    UnetLoaderGGUF from a ``diffusion_models`` folder of their own. ``.reference[family]``: the unquantized
    :data:`REFERENCE_WEIGHT` and the whole state dict of the (small) Wan."""
    import folder_paths

    folder = tmp_path_factory.mktemp("gguf_models")
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    loaded: dict[tuple[str, str], tuple[G.GGUFFile, object]] = {}
    reference: dict[str, dict[str, torch.Tensor]] = {}

    def get(family: str, qtype: str):
        if (family, qtype) not in loaded:
            state = G.state_dict_of(family)  # the Flux is 1.5 GB in float32: write every qtype, then drop it
            reference[family] = state if family == "wan" else {REFERENCE_WEIGHT[family]: state[REFERENCE_WEIGHT[family]]}
            for q in G.QTYPES:
                path = folder / f"otcache_test_{family}_{q}.gguf"
                counts = G.write_gguf(path, state, family, q)
                (patcher,) = gguf_pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(path.name)
                loaded[family, q] = G.GGUFFile(family, q, path, counts), G.tiny_model_of(patcher, family)
            del state
        return loaded[family, qtype]

    get.reference = reference
    yield get
    folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(folder))


@pytest.fixture(scope="module")
def unpatched(gguf_models):
    """The unpatched GGUF model's output, once per (family, qtype)."""
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def get(family: str, qtype: str) -> torch.Tensor:
        if (family, qtype) not in cache:
            cache[family, qtype] = run(gguf_models(family, qtype)[1], family)
        return cache[family, qtype]

    return get


def run(m, family: str, patcher=None) -> torch.Tensor:
    """Sample as the tests do: Wan 10 steps at cfg 3, the (slow) Flux 2 steps at cfg 1."""
    if family == "flux":
        return sample(m, patcher, steps=FLUX_STEPS, cfg=1.0)
    return sample(m, patcher, steps=WAN_STEPS)


def steps_of(family: str) -> int:
    return FLUX_STEPS if family == "flux" else WAN_STEPS


# --------------------------------------------------------------------------------------------------
# The files
# --------------------------------------------------------------------------------------------------

def test_gguf_q6_k_encoding_decodes_in_the_gguf_package_and_the_packs_dequantizer(gguf, gguf_pack):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3.0, (6, 1))).astype(np.float32)
    x[1, 256:] = 0.0  # an all-zero block
    blocks = G.quantize_q6_k(x)
    assert blocks.shape == (6, 2 * 210) and blocks.dtype == np.uint8
    ours = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q6_K)
    theirs = gguf_pack.dequant.dequantize(torch.from_numpy(blocks), gguf.GGMLQuantizationType.Q6_K, x.shape,
                                          dtype=torch.float32).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=0)
    block_max = np.abs(x).reshape(-1, 256).max(axis=1, keepdims=True)
    assert (np.abs(ours - x).reshape(-1, 256) <= block_max / 61).all()  # half a step of 1/31 of the largest
    assert (ours[1, 256:] == 0).all()


@pytest.mark.parametrize(("family", "qtype"), FAMILY_QTYPES)
def test_gguf_files_load_through_the_packs_unet_loader_with_quantized_weights(otcache_pack, gguf_pack, gguf_models,
                                                                              family, qtype):
    written, m = gguf_models(family, qtype)
    dm = m.patcher.model.diffusion_model
    assert type(m.patcher).__name__ == "GGUFModelPatcher"
    assert otcache_pack.nodes.families.detect_family(dm).family == family
    loaded: dict[str, int] = {}
    for _, parameter in dm.named_parameters():
        name = getattr(getattr(parameter, "tensor_type", None), "name", "F32")
        loaded[name] = loaded.get(name, 0) + 1
    assert loaded == written.counts  # every tensor as written: the quantized ones stay quantized in the model
    assert written.counts[qtype] > sum(n for name, n in written.counts.items() if name not in (qtype, "F32"))
    key = REFERENCE_WEIGHT[family]
    weight = gguf_models.reference[family][key]
    stored = dict(dm.named_parameters())[key]
    assert getattr(stored.tensor_type, "name", None) == qtype
    restored = gguf_pack.dequant.dequantize_tensor(stored, torch.float32)
    step = {"Q8_0": 254, "Q6_K": 61}[qtype]  # half a quantization step of the largest value (Q8_0: 1/127)
    assert (restored - weight).abs().max() <= weight.abs().max() / step * 1.01


# --------------------------------------------------------------------------------------------------
# OTCache Apply
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("family", "qtype"), FAMILY_QTYPES)
def test_gguf_all_compute_is_bit_identical_to_the_unpatched_gguf_model(otcache_pack, core, gguf_models, unpatched,
                                                                       reports, family, qtype, mode):
    _, m = gguf_models(family, qtype)
    steps = steps_of(family)
    patched = apply(otcache_pack, m, plan_for(core, range(steps), steps), mode)
    assert torch.equal(run(m, family, patched), unpatched(family, qtype))
    assert reports[-1].computed == list(range(steps)) and reports[-1].mode == mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("qtype", G.QTYPES)
def test_gguf_wan_runs_the_schedule(otcache_pack, core, gguf_models, unpatched, reports, qtype, mode):
    _, m = gguf_models("wan", qtype)
    patched = apply(otcache_pack, m, plan_for(core, PARTIAL), mode)
    with BlockCounter(m) as counted:
        out = run(m, "wan", patched)
    assert reports[-1].computed == PARTIAL and reports[-1].reused == [2, 4, 5, 7, 8]
    with BlockCounter(m) as full:
        run(m, "wan")
    assert full.calls > 0 and counted.calls * WAN_STEPS == full.calls * len(PARTIAL)
    reference, noise = unpatched("wan", qtype), m.noise(m.make_latent(), 3)
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert (out - reference).abs().mean() < 0.5 * (noise - reference).abs().mean()


@pytest.mark.parametrize("mode", MODES)
def test_gguf_flux_runs_the_schedule(otcache_pack, core, gguf_models, reports, mode):
    _, m = gguf_models("flux", "Q8_0")
    out = run(m, "flux", apply(otcache_pack, m, plan_for(core, [0], FLUX_STEPS), mode))
    report = reports[-1]
    assert report.computed == [0] and report.reused == [1] and report.calls_reused == 1
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------
# LoRA on a GGUF model
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_lora(gguf_models, tmp_path_factory):
    """``gguf_lora(model)``: LoraLoaderModelOnly at strength 0.8 with a LoRA for the Wan."""
    import folder_paths
    import nodes

    gguf_models("wan", "Q8_0")
    folder = tmp_path_factory.mktemp("gguf_loras")
    save_lora(folder / LORA, gguf_models.reference["wan"], seed=5)
    folder_paths.add_model_folder_path("loras", str(folder))
    yield lambda model: nodes.LoraLoaderModelOnly().load_lora_model_only(model, LORA, 0.8)[0]
    folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["lora before apply", "lora after apply"])
def test_gguf_with_a_lora_all_compute_is_bit_identical(otcache_pack, core, gguf_models, unpatched, gguf_lora, reports,
                                                       where, mode):
    _, m = gguf_models("wan", "Q8_0")
    with_lora = gguf_lora(m.patcher)
    expected = run(m, "wan", with_lora)
    assert not torch.equal(expected, unpatched("wan", "Q8_0")), "the LoRA must change the GGUF model's output"
    plan = plan_for(core, range(WAN_STEPS))
    if where == "lora before apply":
        patched = apply(otcache_pack, replace(m, patcher=with_lora), plan, mode)
    else:
        patched = gguf_lora(apply(otcache_pack, m, plan, mode))
    assert torch.equal(run(m, "wan", patched), expected)
    assert reports[-1].computed == list(range(WAN_STEPS))


def test_gguf_with_a_lora_after_apply_runs_the_schedule(otcache_pack, core, gguf_models, gguf_lora, reports):
    _, m = gguf_models("wan", "Q6_K")
    out = run(m, "wan", gguf_lora(apply(otcache_pack, m, plan_for(core, PARTIAL))))
    assert reports[-1].computed == PARTIAL and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------
# OTCache Calibrate
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_calibration(otcache_pack, gguf_models, tmp_path_factory):
    """A calibration of the Q6_K Wan, saved in a ComfyUI user folder of its own (kept set for the module's
    tests: OTCache Schedule lists it from there)."""
    import folder_paths

    _, m = gguf_models("wan", "Q6_K")
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path_factory.mktemp("user")))
    try:
        record, _, text, path = otcache_pack.nodes.calibrate_node.run_calibration(
            m.patcher, m.positive(), m.negative(), {"samples": m.make_latent()}, seed=0, samples=1, steps=WAN_STEPS,
            cfg=3.0, sampler_name="euler", scheduler="simple", max_segment=5, strength="rollout", trials=4,
            name="gguf-wan", storage="memory", rules=("hold", "linear"))
        yield record, text, path
    finally:
        folder_paths.set_user_directory(old)


def test_gguf_calibration_is_saved_with_what_it_was_made_with(gguf_calibration):
    record, text, path = gguf_calibration
    assert path is not None and path.name == "gguf-wan.json" and path.is_file()
    assert record.model["family"] == "wan" and record.anchor.method == "optuna"
    assert record.model["loras"]["weights"] == 0 and record.model["sampling"]["shift"] == 8.0
    assert "made with: shift 8, no LoRA" in text


@pytest.mark.parametrize("mode", MODES)
def test_gguf_calibration_is_reused_by_name_and_its_schedule_applied(otcache_pack, gguf_models, gguf_calibration,
                                                                     reports, caplog, mode):
    nodes = otcache_pack.nodes
    assert "gguf-wan" in nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"][0]
    plan, _, summary = nodes.OTCacheSchedule().make("gguf-wan", WAN_STEPS, 4, "computed steps", 3.0, 0)
    assert "calibration 'gguf-wan'" in summary
    _, m = gguf_models("wan", "Q6_K")
    (patched,) = nodes.OTCacheApply().apply(m.patcher, plan, mode, 0.0, 1.0)
    with caplog.at_level("WARNING", logger="OTCache"):
        out = run(m, "wan", patched)
    expected = list(plan.resolve(WAN_STEPS).schedule.compute_steps)
    assert reports[-1].computed == expected and len(expected) == 4 and torch.isfinite(out).all()
    assert not [r for r in caplog.records if "recalibrate" in r.getMessage()]  # the model it was made with


@pytest.mark.parametrize("mode", MODES)
def test_gguf_calibration_at_full_budget_is_bit_identical(otcache_pack, gguf_models, unpatched, gguf_calibration,
                                                          mode):
    nodes = otcache_pack.nodes
    plan, _, _ = nodes.OTCacheSchedule().make("gguf-wan", WAN_STEPS, WAN_STEPS, "computed steps", 3.0, 0)
    _, m = gguf_models("wan", "Q6_K")
    (patched,) = nodes.OTCacheApply().apply(m.patcher, plan, mode, 0.0, 1.0)
    assert torch.equal(run(m, "wan", patched), unpatched("wan", "Q6_K"))


# --------------------------------------------------------------------------------------------------
# The user's graph in a ComfyUI server: Unet Loader (GGUF) -> [LoRA] -> OTCache Apply -> KSampler
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_server(gguf_models, tmp_path_factory, comfyui_root):
    """A ComfyUI server with the ComfyUI-GGUF pack in ``custom_nodes`` and the Wan's GGUF files and LoRA in its
    model folders."""
    from .comfy_server import running_server
    from .conftest import peer_pack_folder

    files = {f"diffusion_models/{gguf_models('wan', q)[0].path.name}": gguf_models("wan", q)[0].path for q in G.QTYPES}
    lora = save_lora(tmp_path_factory.mktemp("server_lora") / LORA, gguf_models.reference["wan"], seed=5)
    with running_server(tmp_path_factory.mktemp("gguf_base"), comfyui_root, packs={"ComfyUI-GGUF": peer_pack_folder(PACK)},
                        models={**files, f"loras/{LORA}": lora}) as server:
        yield server


def gguf_prompt(qtype: str, budget: int | None, mode: str = "auto", lora: bool = False) -> dict:
    from .comfy_server import model_and_inputs

    prompt = {
        **model_and_inputs(),
        "1": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": f"otcache_test_wan_{qtype}.gguf"}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 3, "steps": WAN_STEPS, "cfg": 3.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "gguf"}},
    }
    source = ["1", 0]
    if lora:
        prompt["5"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": source, "lora_name": LORA,
                                                                      "strength_model": 0.8}}
        source = ["5", 0]
    if budget is not None:
        prompt["6"] = {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "generic", "steps": WAN_STEPS, "budget": budget, "budget_as": "computed steps", "speedup": 3.0,
            "warmup_steps": 0, "lambda_mapping": "linear"}}
        prompt["7"] = {"class_type": "OTCacheApply", "inputs": {"model": source, "schedule": ["6", 0], "mode": mode,
                                                               "start_percent": 0.0, "end_percent": 1.0}}
        source = ["7", 0]
    prompt["8"]["inputs"]["model"] = source
    return prompt


@pytest.mark.parametrize("qtype", G.QTYPES)
def test_gguf_graph_in_a_server_is_exact_at_full_budget_and_runs_the_schedule(gguf_server, qtype):
    from .test_lora import run_latent

    for lora in (False, True):
        unpatched = run_latent(gguf_server, gguf_prompt(qtype, None, lora=lora))
        for mode in MODES:
            assert torch.equal(run_latent(gguf_server, gguf_prompt(qtype, WAN_STEPS, mode, lora)), unpatched), (lora, mode)
        start = len(gguf_server.log())
        cached = run_latent(gguf_server, gguf_prompt(qtype, 4, "auto", lora))
        assert not torch.equal(cached, unpatched)
        assert f"OTCache [model]: computed 4/{WAN_STEPS} steps" in gguf_server.log()[start:]

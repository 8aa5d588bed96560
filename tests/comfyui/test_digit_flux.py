"""The ComfyUI-native testbed (a trained ComfyUI Flux) and multi-prompt calibration on it.

The quality checks can fail: the shipped classifier must recognise the requested digits, and a run
that computes half the steps must stay close to full compute.
"""

from __future__ import annotations

import pytest
import torch

STEPS = 8
CAL_PROMPTS = ("a handwritten digit zero", "the number 4")


@pytest.fixture(scope="module")
def df(otcache_pack):
    from . import digit_flux

    return digit_flux


@pytest.fixture(scope="module")
def testbed(df, tiny):
    return df.load()


def sample(df, testbed, model, prompts, seeds, steps=None):
    """Decoded digits of ``prompts`` x ``seeds`` (prompt-major), one ``comfy.sample.sample`` call each."""
    import comfy.sample

    images = []
    for text in prompts:
        for seed in seeds:
            latent = df.empty_latent(1)
            out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps or df.STEPS, df.CFG,
                                      df.SAMPLER, df.SCHEDULER, testbed.encode(text), testbed.negative(), latent,
                                      seed=seed, disable_pbar=True)
            images.append(df.decode_latent(out))
    return torch.cat(images)


def test_the_latent_is_the_folded_digit_and_decodes_exactly(df):
    pixels = torch.rand(3, 1, 28, 28) * 2 - 1
    latent = df.encode_pixels(pixels)
    assert latent.shape == (3, 16, 8, 8)
    assert torch.allclose(df.decode_latent(latent), pixels, atol=1e-5)


def test_prompts_are_encoded_as_clip_text_encode_does(df, testbed):
    import nodes as comfy_nodes

    (reference,) = comfy_nodes.CLIPTextEncode().encode(testbed.clip, "a handwritten digit seven")
    ours = testbed.encode("a handwritten digit seven")
    assert ours[0][0].shape == (1, df.TEXT_TOKENS, 16) and ours[0][1]["pooled_output"].shape == (1, 16)
    assert torch.equal(ours[0][0], reference[0][0])
    assert not torch.equal(ours[0][0], testbed.encode("a handwritten digit eight")[0][0])


def test_the_shipped_weights_are_small_fp16_and_fit_the_configs(df, testbed):
    from safetensors import safe_open

    assert df.WEIGHTS.stat().st_size < 5 * 1024 * 1024
    with safe_open(str(df.WEIGHTS), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert type(testbed.patcher.model.diffusion_model).__module__ == "comfy.ldm.flux.model"


def test_the_held_out_split_never_shares_a_prompt(df):
    calibration, evaluation = set(df.calibration_prompts()), set(df.evaluation_prompts())
    assert not calibration & evaluation
    assert calibration | evaluation == set(df.all_prompts())
    assert {df.prompt_digit(p) % 2 for p in calibration} == {0} and {df.prompt_digit(p) % 2 for p in evaluation} == {1}


def test_samples_show_the_requested_digit(df, testbed):
    from otcache_core.testbed import load_classifier

    classifier = load_classifier()
    prompts = [df.prompt(d, t) for d in range(10) for t in (0, 2)]
    images = sample(df, testbed, testbed.patcher, prompts, seeds=[7])
    predicted = classifier(images).argmax(1).tolist()
    agreement = sum(p == df.prompt_digit(t) for p, t in zip(predicted, prompts)) / len(prompts)
    assert agreement >= 0.9, f"class agreement {agreement:.2f}: {predicted}"


def test_half_the_steps_evenly_spaced_stay_close_to_full_compute(df, testbed, otcache_pack):
    core, nodes = otcache_pack.otcache_core, otcache_pack.nodes
    prompts = [df.prompt(d, 1) for d in (1, 5, 9)]
    full = sample(df, testbed, testbed.patcher, prompts, seeds=[3])
    plan = core.plan.SchedulePlan.from_schedule(core.warp.sample_warp(core.warp.identity_warp(), df.STEPS, 15))
    (cached,) = nodes.OTCacheApply().apply(testbed.patcher, plan, "model", 0.0, 1.0)
    fidelity = core.metrics.psnr((sample(df, testbed, cached, prompts, seeds=[3]) + 1) / 2, (full + 1) / 2)
    assert 35.0 < fidelity < 100.0  # 39.8 dB when trained; full compute itself would be inf


# --------------------------------------------------------------------------------------------------
# Multi-prompt calibration
# --------------------------------------------------------------------------------------------------


def calibrate(otcache_pack, df, testbed, folder, positive, prompts="", **overrides):
    kwargs = dict(seed=0, samples=2, steps=STEPS, cfg=df.CFG, sampler_name=df.SAMPLER, scheduler=df.SCHEDULER,
                  max_segment=4, strength="rollout", trials=3, name="digits", storage="memory", folder=folder,
                  clip=testbed.clip, prompts=prompts)
    kwargs.update(overrides)
    return otcache_pack.nodes.calibrate_node.run_calibration(
        testbed.patcher, testbed.encode(positive), testbed.negative(), {"samples": df.empty_latent(1)}, **kwargs)[0]


def test_the_record_lists_the_prompts_and_seeds_it_was_calibrated_on(otcache_pack, df, testbed, tmp_path):
    record = calibrate(otcache_pack, df, testbed, tmp_path, CAL_PROMPTS[0], prompts=f"{CAL_PROMPTS[1]}\n\n")
    assert record.sampler["prompts"] == ["(the connected positive)", CAL_PROMPTS[1]]
    assert record.sampler["seeds"] == [0] and record.sampler["validation_seeds"] == [1]  # half searches, half checks


@pytest.mark.parametrize("latent_batch", [1, 2])
def test_prompts_batched_together_give_what_each_gives_alone(otcache_pack, df, testbed, latent_batch):
    cal = otcache_pack.nodes.calibrate_node
    latent = {"samples": df.empty_latent(latent_batch)}

    def make(cond, n):
        return cal.ComfyCalibrationSampler(testbed.patcher, cond, testbed.negative(), latent, [0, 1] * n, STEPS,
                                           df.CFG, df.SAMPLER, df.SCHEDULER)

    rows = 2 * latent_batch
    sampler, labels, _ = otcache_pack.nodes.calibration_prompts.prompt_sampler(
        make, testbed.encode(CAL_PROMPTS[0]), testbed.clip, CAL_PROMPTS[1], rows=rows, row_elements=1024)
    assert len(sampler.samplers) == 1  # one batch of 2 prompts x 2 seeds
    mask = [True, True, False, True, False, False, True, True]
    both = sampler.run(mask).final
    alone = torch.cat([make(testbed.encode(text), 1).run(mask).final for text in CAL_PROMPTS])
    assert both.shape[0] == 2 * rows and torch.allclose(both, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[:rows], both[rows:], atol=1e-3)  # the prompts really differ


def test_edge_errors_average_over_the_prompts(otcache_pack, df, testbed, tmp_path):
    import numpy as np

    matrices = [calibrate(otcache_pack, df, testbed, tmp_path, text, name=f"one-{k}").edge_errors["matrix"]
                for k, text in enumerate(CAL_PROMPTS)]
    both = calibrate(otcache_pack, df, testbed, tmp_path, CAL_PROMPTS[0], prompts=CAL_PROMPTS[1],
                     name="both").edge_errors["matrix"]
    a, b, ab = (np.array(m, dtype=float) for m in (*matrices, both))
    measured = np.isfinite(ab) & (ab > 0)
    assert measured.sum() > 10
    low, high = np.minimum(a, b)[measured], np.maximum(a, b)[measured]
    assert (ab[measured] >= low * (1 - 1e-5)).all() and (ab[measured] <= high * (1 + 1e-5)).all()
    assert (ab[measured] < high).mean() > 0.5  # a real mixture, not one prompt's errors


def test_prompts_need_a_clip(otcache_pack, df, testbed, tmp_path):
    with pytest.raises(otcache_pack.otcache_core.errors.OTCacheError, match="'clip'"):
        calibrate(otcache_pack, df, testbed, tmp_path, CAL_PROMPTS[0], prompts="the number 6", clip=None)


def test_prompts_take_the_plain_settings_of_the_connected_positive(otcache_pack, testbed):
    import node_helpers

    positive = node_helpers.conditioning_set_values(testbed.encode(CAL_PROMPTS[0]), {"guidance": 2.5})
    (encoded,) = otcache_pack.nodes.calibration_prompts.encode_prompts(testbed.clip, [CAL_PROMPTS[1]], like=positive)
    assert encoded[0][1]["guidance"] == 2.5
    assert torch.equal(encoded[0][0], testbed.encode(CAL_PROMPTS[1])[0][0])
    assert not torch.equal(encoded[0][1]["pooled_output"], positive[0][1]["pooled_output"])

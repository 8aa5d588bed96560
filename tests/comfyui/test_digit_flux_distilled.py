"""The guidance-distilled DigitFlux: FLUX.1-dev's regime (one model call per step, cfg 1, the strength
as a guidance embedding) on the ComfyUI testbed.

The quality checks can fail: the shipped classifier must recognise the requested digits, the student
at guidance g must draw what its teacher draws with real CFG at scale g, and the guidance must act.
"""

from __future__ import annotations

import hashlib
import statistics

import pytest
import torch

#: Ten digits in two phrasings, one seed each: the teacher's own integration-test prompts.
DIGITS = [(d, t) for d in range(10) for t in (0, 2)]
GUIDANCES = (1.0, 2.0, 4.0, 6.0)


@pytest.fixture(scope="module")
def df(otcache_pack):
    from . import digit_flux

    return digit_flux


@pytest.fixture(scope="module")
def student(df, tiny):
    return df.load(variant="distilled")


@pytest.fixture(scope="module")
def teacher(df, tiny):
    return df.load()


def sample(df, testbed, prompts, seeds, *, model=None, cfg=None, guidance=None):
    """Decoded digits in [0, 1] of ``prompts[i]`` with ``seeds[i]``, one ``comfy.sample.sample`` batch, at
    the testbed's own setting unless ``cfg`` / ``guidance`` say otherwise."""
    import comfy.sample

    conds = [testbed.encode(p)[0] for p in prompts]
    positive = [[torch.cat([c[0] for c in conds]), {"pooled_output": torch.cat([c[1]["pooled_output"] for c in conds])}]]
    guidance = testbed.guidance if guidance is None else guidance
    if guidance is not None:
        positive = df.with_guidance(positive, guidance)
    noise = torch.cat([comfy.sample.prepare_noise(df.empty_latent(1), s) for s in seeds])
    out = comfy.sample.sample(model or testbed.patcher, noise, df.STEPS, testbed.cfg if cfg is None else cfg,
                              df.SAMPLER, df.SCHEDULER, positive, testbed.negative(), df.empty_latent(len(prompts)),
                              seed=0, disable_pbar=True)
    return ((df.decode_latent(out) + 1) / 2).clamp(0, 1)


def mean_psnr(core, a, b):
    return statistics.fmean(core.metrics.psnr(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0]))


@pytest.fixture(scope="module")
def prompts(df):
    return [df.prompt(d, t) for d, t in DIGITS]


@pytest.fixture(scope="module")
def student_digits(df, student, prompts):
    """The student at its setting (cfg 1, guidance 4) on :data:`DIGITS`, seed 7."""
    return sample(df, student, prompts, [7] * len(prompts))


@pytest.fixture(scope="module")
def classifier():
    from otcache_core.testbed import load_classifier

    return load_classifier()


def classify(classifier, digits):
    with torch.no_grad():
        return classifier(digits * 2 - 1).argmax(1)


def test_the_student_is_a_flux_with_a_guidance_embedding_built_as_flux1_dev_is(df, student, teacher):
    import comfy.supported_models

    dm = student.patcher.model.diffusion_model
    assert type(dm).__module__ == "comfy.ldm.flux.model" and dm.params.guidance_embed
    assert type(student.patcher.model.model_config) is comfy.supported_models.Flux
    assert not teacher.patcher.model.diffusion_model.params.guidance_embed
    assert (student.cfg, student.guidance) == (df.DISTILLED_CFG, df.DISTILLED_GUIDANCE) == (1.0, 4.0)


def test_the_file_is_small_fp16_holds_only_the_flux_and_names_its_teacher(df, student):
    import json

    from safetensors import safe_open

    assert df.DISTILLED_WEIGHTS.stat().st_size < 3 * 1024 * 1024
    with safe_open(str(df.DISTILLED_WEIGHTS), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert all(k.startswith("diffusion_model.") for k in f.keys())
    assert student.metadata["teacher_sha256"] == hashlib.sha256(df.WEIGHTS.read_bytes()).hexdigest()
    assert json.loads(student.metadata["sampling"])["guidance"] == df.DISTILLED_GUIDANCE


def test_the_positive_is_what_flux_guidance_makes_of_clip_text_encode(student):
    from comfy_extras.nodes_flux import FluxGuidance

    (reference,) = FluxGuidance.execute(student.encode("the number 3"), 4.0)
    ours = student.positive("the number 3")
    assert ours[0][1]["guidance"] == reference[0][1]["guidance"] == 4.0
    assert torch.equal(ours[0][0], reference[0][0])
    assert "guidance" not in student.encode("the number 3")[0][1]


def test_a_teacher_file_is_refused_as_the_distilled_variant(df, tiny):
    with pytest.raises(ValueError, match="expected 'otcache.testbed.digit_flux.distilled'"):
        df.load(df.WEIGHTS, variant="distilled")


def test_another_text_encoder_than_the_one_distilled_with_is_refused(df, tiny, tmp_path):
    other = df.with_another_text_encoder(df.WEIGHTS, tmp_path / "other_teacher.safetensors")
    with pytest.raises(ValueError, match="another text encoder"):
        df.load(variant="distilled", teacher=other)


def test_sampling_at_cfg_1_calls_the_model_once_per_step_with_the_guidance(df, student, prompts):
    import comfy.patcher_extension as pe

    calls = []

    def count(executor, *args, **kwargs):
        calls.append((args[0].shape[0], kwargs["guidance"].tolist()))
        return executor(*args, **kwargs)

    model = student.patcher.clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_count_calls", count)
    sample(df, student, prompts[:2], [7, 8], model=model)
    assert calls == [(2, [4.0, 4.0])] * df.STEPS  # the two prompts only: no negative rows, no second call


def test_samples_show_the_requested_digit(df, student_digits, classifier):
    predicted = classify(classifier, student_digits).tolist()
    agreement = sum(p == d for p, (d, _) in zip(predicted, DIGITS)) / len(DIGITS)
    assert agreement >= 0.9, f"class agreement {agreement:.2f}: {predicted}"


def test_the_student_draws_what_the_teacher_draws_with_cfg_at_the_same_strength(df, otcache_pack, student_digits,
                                                                               teacher, prompts, classifier):
    guided = sample(df, teacher, prompts, [7] * len(prompts), cfg=df.DISTILLED_GUIDANCE)
    assert mean_psnr(otcache_pack.otcache_core, student_digits, guided) > 24.0  # 28.8 dB as shipped
    assert (classify(classifier, student_digits) == classify(classifier, guided)).float().mean() >= 0.9


def test_the_guidance_acts_as_the_teachers_cfg_scale(df, otcache_pack, student, teacher, prompts):
    """At guidance 1, 2 and 4 the student is closest to the teacher at that CFG scale (at 6, the edge of
    the distilled range, it is closest to the teacher's 6 by only 0.6 dB over the teacher's 4, 24.9 vs
    24.4 dB as shipped: too close to assert); from 1 to 6 its outputs move steadily away from its
    guidance-1 output and, as CFG does, draw bolder digits."""
    core, seeds = otcache_pack.otcache_core, [7] * len(prompts)
    ours = {g: sample(df, student, prompts, seeds, guidance=g) for g in GUIDANCES}
    theirs = {g: sample(df, teacher, prompts, seeds, cfg=g) for g in GUIDANCES}
    for g in GUIDANCES[:-1]:
        closest = max(GUIDANCES, key=lambda scale: mean_psnr(core, ours[g], theirs[scale]))
        assert closest == g, f"the student at guidance {g:g} is closest to the teacher at cfg {closest:g}"
    distance = [mean_psnr(core, ours[g], ours[1.0]) for g in GUIDANCES[1:]]
    assert distance == sorted(distance, reverse=True), distance
    ink = [ours[g].mean().item() for g in GUIDANCES]
    assert ink == sorted(ink) and ink[-1] > ink[0] + 0.01, ink

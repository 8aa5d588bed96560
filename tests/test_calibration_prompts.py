"""Multi-prompt calibration, the parts that need no ComfyUI: prompt lines and stacking of sampling results.

The sampling itself runs on a real ComfyUI in ``tests/comfyui/test_digit_flux.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from pack_import import load_pack

from otcache_core.calibrate import SamplingResult

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "otcache_pack"


@pytest.fixture(scope="module")
def prompts() -> ModuleType:
    pack = sys.modules.get(PACK_NAME) or load_pack(REPO, PACK_NAME)
    return pack.nodes.calibration_prompts


def result(value: float, *, record: bool = False) -> SamplingResult:
    r = SamplingResult(final=torch.full((2, 3), value), model_calls=5)
    r.denoised = {1: torch.full((2, 3), value + 1), 2: torch.full((2, 3), value + 2)}
    if record:
        r.states = [torch.full((2, 3), value), torch.full((2, 3), value + 0.5)]
        r.outputs = {0: torch.full((2, 3), -value)}
        r.step_sizes = [0.5, 0.5]
    return r


def test_each_non_blank_line_is_one_prompt_in_order_without_repeats(prompts):
    assert prompts.prompt_lines("  a cat \n\n a dog\r\na cat\n   \n") == ["a cat", "a dog"]
    assert prompts.prompt_lines("") == [] and prompts.prompt_lines(None) == []


def test_prompts_without_a_clip_say_what_to_connect(prompts):
    with pytest.raises(prompts.OTCacheError, match="connect the CLIP"):
        prompts.encode_prompts(None, ["a cat"])
    assert prompts.encode_prompts(None, []) == []


def test_stacked_results_put_the_samples_of_each_prompt_one_after_another(prompts):
    stacked = prompts.stack_results([result(1.0, record=True), result(7.0, record=True)])
    assert torch.equal(stacked.final, torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 7.0)]))
    assert torch.equal(stacked.denoised[2], torch.cat([torch.full((2, 3), 3.0), torch.full((2, 3), 9.0)]))
    assert [s[:, 0].tolist() for s in stacked.states] == [[1.0, 1.0, 7.0, 7.0], [1.5, 1.5, 7.5, 7.5]]
    assert stacked.outputs[0][:, 0].tolist() == [-1.0, -1.0, -7.0, -7.0]


def test_stacked_results_add_model_calls_and_keep_the_shared_step_sizes(prompts):
    stacked = prompts.stack_results([result(1.0, record=True), result(2.0, record=True), result(3.0, record=True)])
    assert stacked.model_calls == 15 and stacked.step_sizes == [0.5, 0.5]


def test_unrecorded_fields_stay_empty_and_one_result_is_returned_as_it_is(prompts):
    first = result(1.0)
    stacked = prompts.stack_results([first, result(2.0)])
    assert stacked.states is None and stacked.step_sizes is None and stacked.outputs == {}
    assert prompts.stack_results([first]) is first


def test_only_steps_every_prompt_reached_are_stacked(prompts):
    a, b = result(1.0), result(2.0)
    del b.denoised[2]
    assert list(prompts.stack_results([a, b]).denoised) == [1]


class RecordingSampler:
    """A calibration sampler of ``rows`` samples that returns its replay state plus ``offset``."""

    steps = 4
    sigmas = None

    def __init__(self, rows: int, offset: float) -> None:
        self.latent_image, self.offset, self.model_calls, self.seen = torch.zeros(rows, 2), offset, 0, []

    def run(self, mask, *, start=0, state=None, **kwargs) -> SamplingResult:
        self.seen.append(state)
        base = self.latent_image if state is None else state
        self.model_calls += 3
        return SamplingResult(final=base + self.offset, model_calls=3)


def test_a_replay_hands_each_prompt_its_own_rows_of_the_state(prompts):
    a, b = RecordingSampler(2, 10.0), RecordingSampler(3, 20.0)
    sampler = prompts.PromptSampler([a, b])
    state = torch.arange(10.0).reshape(5, 2)
    out = sampler.run([True] * 4, start=1, state=state)
    assert torch.equal(a.seen[0], state[:2]) and torch.equal(b.seen[0], state[2:])
    assert torch.equal(out.final, torch.cat([state[:2] + 10, state[2:] + 20]))
    assert sampler.model_calls == 6 and sampler.latent_image.shape == (5, 2)


def text_cond(tokens: int = 8, value: float = 0.0, **plain) -> list:
    """A conditioning shaped as CLIP Text Encode makes it (one entry, batch-1 tensors)."""
    return [[torch.full((1, tokens, 4), value), {"pooled_output": torch.full((1, 4), value), **plain}]]


def test_text_conditionings_of_one_shape_sample_as_one_batch(prompts):
    conds = [text_cond(value=v) for v in range(4)]
    assert prompts.batches(conds, rows=2, row_elements=64) == [[0, 1, 2, 3]]


def test_a_batch_never_exceeds_the_latent_limit_but_always_holds_one_prompt(prompts):
    conds = [text_cond(value=v) for v in range(5)]
    assert prompts.batches(conds, rows=2, row_elements=100, limit=450) == [[0, 1], [2, 3], [4]]
    assert prompts.batches(conds, rows=2, row_elements=10**6, limit=450) == [[0], [1], [2], [3], [4]]


def test_other_shapes_settings_or_structures_sample_on_their_own(prompts):
    area = [[torch.zeros(1, 8, 4), {"pooled_output": torch.zeros(1, 4), "area": (8, 8, 0, 0)}]]
    two_entries = text_cond() + text_cond()
    conds = [text_cond(), text_cond(tokens=16), text_cond(guidance=2.0), text_cond(guidance=2.0), area, two_entries]
    assert prompts.batches(conds, rows=1, row_elements=1) == [[0], [1], [2, 3], [4], [5]]


def test_a_batch_repeats_each_prompt_for_its_seeds_prompt_major(prompts):
    batched = prompts._batched([text_cond(value=1.0, guidance=3.0), text_cond(value=2.0, guidance=3.0)], repeats=3)
    ((context, extras),) = batched
    assert context[:, 0, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert extras["pooled_output"][:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0] and extras["guidance"] == 3.0


def test_a_conditioning_alone_is_left_as_it_is(prompts):
    area = [[torch.zeros(1, 8, 4), {"area": (8, 8, 0, 0)}], [torch.ones(1, 8, 4), {}]]
    assert prompts._batched([area], repeats=4) is area

"""The cached flow sampler against the testbed's plain Euler sampler (same model, same grid)."""

import torch

from otcache_core.testbed.flow import FlowSampler
from otcache_core.schedule import Schedule
from otcache_core.testbed.model import TinyDiT, TinyDiTConfig
from otcache_core.testbed.sampler import sample_euler, sigmas


def random_dit() -> TinyDiT:
    """A small TinyDiT with random (not adaLN-zero) weights, so that every block matters."""
    model = TinyDiT(TinyDiTConfig(hidden_size=32, depth=3, num_heads=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
    return model.eval()


def test_all_compute_cached_sampling_equals_plain_euler_bit_for_bit():
    model = random_dit()
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 5, 7])
    for cfg in (1.0, 4.0):
        plain = sample_euler(model, noise, labels, 12, cfg)
        for mode in ("blocks", "model"):
            sampler = FlowSampler(model, noise, labels, sigmas(12), cfg_scale=cfg, null_class=10, mode=mode)
            assert torch.equal(sampler.sample(Schedule.all_compute(12)), plain), (cfg, mode)


def test_reused_steps_differ_from_plain_euler_but_stay_close():
    model = random_dit()
    noise = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 4])
    plain = sample_euler(model, noise, labels, 12, 4.0)
    cached = FlowSampler(model, noise, labels, sigmas(12), cfg_scale=4.0, null_class=10).sample(
        Schedule.from_steps([0, 1, 2, 4, 6, 8, 11], 12))
    assert not torch.equal(cached, plain)
    assert (cached - plain).abs().mean() < 0.25 * (noise - plain).abs().mean()

"""Shared fixtures of the core test-suite (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otcache_core.testbed.flow import FlowSampler

# Tiny models run many small ops: one thread avoids oversubscription (which made these tests 15x
# slower on a loaded 2-core machine) and keeps float results independent of the core count.
torch.set_num_threads(1)


class ToySplitModel(nn.Module):
    """A small random velocity model with the embed / blocks / head split (not trained).

    Enough to exercise the cache engine and the calibration stages for real, in milliseconds.
    """

    def __init__(self, dim: int = 16, width: int = 32, depth: int = 3, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(dim, width)
        self.time = nn.Linear(1, width)
        self.label = nn.Embedding(classes + 1, width)
        self.blocks = nn.ModuleList(ToyBlock(width) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.tanh(self.time(t[:, None]) + self.label(y))
        return self.inp(x), c

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.out(h * (1 + c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, c = self.embed(x, t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.head(h, c)


class ToyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(h) * (1 + c))


TOY_CLASSES = 4


@pytest.fixture(scope="session")
def toy_model() -> ToySplitModel:
    return ToySplitModel(classes=TOY_CLASSES).eval()


def make_toy_sampler(model: ToySplitModel, steps: int = 12, batch: int = 3, mode: str = "blocks",
                     cfg: float = 2.0, seed: int = 1) -> FlowSampler:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 16, generator=gen)
    labels = torch.arange(batch) % TOY_CLASSES
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    return FlowSampler(model, noise, labels, sigmas, cfg_scale=cfg, null_class=TOY_CLASSES, mode=mode)


@pytest.fixture
def toy_sampler(toy_model: ToySplitModel) -> FlowSampler:
    return make_toy_sampler(toy_model)


@pytest.fixture
def make_sampler(toy_model: ToySplitModel):
    """Factory: ``make_sampler(steps=12, batch=3, mode="blocks", cfg=2.0, seed=1)``."""

    def factory(**kwargs) -> FlowSampler:
        return make_toy_sampler(toy_model, **kwargs)

    return factory

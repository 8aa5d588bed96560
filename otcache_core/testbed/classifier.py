"""A tiny MNIST CNN used as the testbed's quality judge: does a generated digit show its class?

Trained on the first 9,000 of the 10,000 t10k digits and measured on the last 1,000 (never seen in
training), with small random translations as augmentation so that it tolerates off-centre samples.
Run ``python -m otcache_core.testbed.classifier --data DIR --out DIR`` to train it alone; the main
script :mod:`.train` trains it after the DiT.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_FILE = "classifier_mnist.safetensors"
CLASSIFIER_FORMAT = "otcache.testbed.classifier"
HOLDOUT = 1000


class DigitClassifier(nn.Module):
    """Three conv stages (16, 32, 64 channels, each conv-BN-ReLU-maxpool) and a linear layer.

    Input ``[B, 1, 28, 28]`` in [-1, 1]; output logits ``[B, 10]``. About 29k parameters.
    """

    def __init__(self) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.features = nn.Sequential(stage(1, 16), stage(16, 32), stage(32, 64))  # 28 -> 14 -> 7 -> 3
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(64 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).flatten(1)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Predicted class ``argmax logits`` for images in [-1, 1] (evaluated in chunks)."""
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]^2``, filling with -1."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # [n, 1, h, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # [n, 1, 1, w]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 3e-3,
    holdout: int = HOLDOUT,
    log: bool = True,
) -> tuple[DigitClassifier, float]:
    """Train on all but the last ``holdout`` digits; return the model (eval mode) and held-out accuracy.

    AdamW with a one-cycle learning rate (linear warm-up, cosine decay); cross-entropy loss.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = images[:-holdout], labels[:-holdout]
    x_test, y_test = images[-holdout:], labels[-holdout:]
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-x_train.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        for i in range(0, x_train.shape[0], batch_size):
            idx = order[i : i + batch_size]
            xb = random_shift(x_train[idx], 2, gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        acc = (model.predict(x_test) == y_test).float().mean().item()
        if log:
            print(f"classifier epoch {epoch + 1}/{epochs} loss {loss.item():.4f} "
                  f"held-out acc {acc:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    model.eval()
    return model, acc


def save_classifier(model: DigitClassifier, path: str | Path, accuracy: float, seed: int) -> Path:
    """Save the classifier as fp16 safetensors with its held-out accuracy in the metadata."""
    from .files import save_reproducible

    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    meta = {"format": CLASSIFIER_FORMAT, "heldout_accuracy": f"{accuracy:.4f}",
            "heldout": f"last {HOLDOUT} of MNIST t10k", "seed": str(seed)}
    return save_reproducible(tensors, path, meta)


def main(argv: list[str] | None = None) -> None:
    """Command line: train the classifier and save it to ``--out``."""
    from .data import load_mnist

    parser = argparse.ArgumentParser(description="Train the testbed's MNIST classifier.")
    parser.add_argument("--data", required=True, help="folder with the MNIST t10k IDX gzip files")
    parser.add_argument("--out", required=True, help="folder to write " + CLASSIFIER_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, labels = load_mnist(args.data)
    start = time.perf_counter()
    model, acc = train_classifier(images, labels, seed=args.seed)
    path = save_classifier(model, Path(args.out) / CLASSIFIER_FILE, acc, args.seed)
    print(json.dumps({"classifier": str(path), "heldout_accuracy": acc,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

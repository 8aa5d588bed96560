"""Writing safetensors files byte-for-byte reproducibly.

``safetensors`` stores the metadata dict in hash-map order, so two saves of the same weights can
differ in the header bytes. :func:`save_reproducible` rewrites the header with sorted metadata keys,
so the same seed gives a byte-identical weight file (checkable with ``sha256sum``).

Layout (safetensors spec): ``u64 little-endian N``, ``N`` bytes of JSON header (padded with spaces to a
multiple of 8), then the raw tensor bytes; tensor offsets in the header are relative to the data
start, so re-serialising the header does not move any tensor.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch


def save_reproducible(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str]) -> Path:
    """Save ``tensors`` with ``metadata`` as safetensors at ``path``, atomically and deterministically."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = struct.pack("<Q", len(text)) + text + raw[8 + n :]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weight files are meant to be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

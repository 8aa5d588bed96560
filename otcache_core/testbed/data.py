"""MNIST from the original IDX gzip files, read with the standard library only.

The testbed trains on the 10,000 MNIST *test* digits (``t10k-*``): they are small enough to ship
nowhere and to train on in minutes on two CPU cores. The data itself is never part of the repository.

IDX format (big-endian): a 4-byte magic ``0x00 0x00 <dtype> <ndim>`` (dtype ``0x08`` = uint8),
then ``ndim`` uint32 dimension sizes, then the raw values in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import OTCacheError

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"

_UBYTE = 0x08


class DataError(OTCacheError):
    """The MNIST files are missing or are not valid IDX files."""


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a gzip-compressed uint8 IDX file with ``ndim`` dimensions into a numpy array.

    Raises :class:`DataError` naming the file when it is absent, not gzip, or not the expected
    IDX shape, so the user knows which download to redo.
    """
    if not path.is_file():
        raise DataError(
            f"MNIST file not found: {path}. Put '{IMAGES_FILE}' and '{LABELS_FILE}' "
            f"(the original gzip IDX files) in that folder."
        )
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} is not a readable gzip file ({exc}); download it again.") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is too short ({len(raw)} bytes) to be an IDX file.")
    zero, dtype, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE or got_ndim != ndim:
        raise DataError(
            f"{path} has IDX magic (0x{zero:04x}, dtype 0x{dtype:02x}, ndim {got_ndim}); "
            f"expected an unsigned-byte IDX file with {ndim} dimension(s)."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) != header + count:
        raise DataError(
            f"{path} holds {len(raw) - header} values but its header announces {dims} = {count}; "
            f"the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the MNIST t10k digits from ``folder``.

    Returns ``(images, labels)``: ``images`` float32 of shape ``[N, 1, 28, 28]`` scaled from
    ``{0..255}`` to ``[-1, 1]`` by ``x = 2 * p / 255 - 1``; ``labels`` int64 of shape ``[N]`` in 0..9.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found: {folder}")
    images = _read_idx(folder / IMAGES_FILE, ndim=3)
    labels = _read_idx(folder / LABELS_FILE, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels; the two files do not belong together."
        )
    if images.shape[1:] != (28, 28):
        raise DataError(f"{folder / IMAGES_FILE}: images are {images.shape[1:]}, expected (28, 28).")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{folder / LABELS_FILE}: label {int(labels.max())} is outside 0..9.")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).mul_(2.0 / 255.0).sub_(1.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y

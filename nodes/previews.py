"""Images a node shows on itself in the page: saved to ComfyUI's temp folder, as Preview Image does."""

from __future__ import annotations

import os

import numpy as np


def temp_preview(rgb: np.ndarray, prefix: str = "OTCache") -> dict[str, str]:
    """Save ``H x W x 3`` uint8 as a PNG in ComfyUI's temp folder; the entry for a node's ``ui`` images.

    The temp folder is emptied when ComfyUI starts, like Preview Image's files.
    """
    import folder_paths
    from PIL import Image

    temp = folder_paths.get_temp_directory()
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(f"{prefix}_temp", temp, rgb.shape[1],
                                                                           rgb.shape[0])
    os.makedirs(folder, exist_ok=True)
    filename = f"{stem}_{counter:05}_.png"
    Image.fromarray(rgb).save(os.path.join(folder, filename), compress_level=1)
    return {"filename": filename, "subfolder": subfolder, "type": "temp"}

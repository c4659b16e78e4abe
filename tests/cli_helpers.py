"""Tiny on-disk inputs for command-line tests: a ViT model directory and a save_to_disk image dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from export_helpers import IMAGE, tiny_vit

__all__ = ["vit_dir", "image_dataset_dir"]


def vit_dir(path: Path, *, nan_from_block: int | None = None) -> Path:
    """`tiny_vit()` saved with save_pretrained; `nan_from_block=k` puts a NaN into block k's MLP bias."""
    model = tiny_vit()
    if nan_from_block is not None:
        with torch.no_grad():
            model.layers[nan_from_block].mlp.fc2.bias[0] = float("nan")
    model.save_pretrained(path)
    return path


def image_dataset_dir(path: Path, n: int = 8) -> Path:
    """`n` random IMAGE × IMAGE RGB images with two labels, as a DatasetDict with a train split on disk."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    return path

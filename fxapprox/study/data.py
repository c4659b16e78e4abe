"""Dataset rows → model keyword arguments; a seeded random subset → a calibration loader.

Images (PIL, any mode) are resized to `size`×`size`, grey turned into 3 channels and normalised
with the model's mean/std (ImageNet's for DINOv2) → `{"pixel_values": (B, 3, size, size)}`. Texts
go through the model's tokenizer with padding and truncation → `{"input_ids", "attention_mask"}`.
Batches are dicts of model keyword arguments, which is what `fxapprox.compress(model, loader)`
and `fxapprox.study.evaluate` take.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fxapprox.errors import AssetError, CalibrationError
from fxapprox.study import assets

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePreprocessor",
    "TextPreprocessor",
    "make_preprocessor",
    "calibration_loader",
    "data_loader",
    "random_subset",
    "model_modality",
    "dataset_modality",
    "check_modality",
    "check_image_size",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 112  # CPU-sized; DINOv2 interpolates its position embeddings
DEFAULT_MAX_LENGTH = 128


@dataclass
class ImagePreprocessor:
    """PIL images → `{"pixel_values": float32 (B, 3, size, size)}`, normalised per channel."""

    size: int = DEFAULT_IMAGE_SIZE
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    column: str = "image"

    def encode(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Images (PIL or uint8 arrays, grey or RGB) → model kwargs."""
        if not images:
            raise ValueError("no image to preprocess")
        x = torch.cat([self._resized(img) for img in images])
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return {"pixel_values": ((x - mean) / std).contiguous()}

    def _resized(self, image: Any) -> torch.Tensor:
        """One image (PIL or uint8 `(H, W)` / `(H, W, 3)` array) → float `(1, 3, size, size)` in [0, 1]."""
        if hasattr(image, "convert"):
            image = image.convert("L") if image.mode in ("L", "1", "I", "I;16", "F") else image.convert("RGB")
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).float().div_(255.0)
        x = x.expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
        x = x.unsqueeze(0)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        return x

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Dataset rows (dicts with an image column) → model kwargs; a DataLoader collate_fn."""
        return self.encode([row[self.column] for row in rows])


@dataclass
class TextPreprocessor:
    """Texts → `{"input_ids", "attention_mask"}` (int64, padded to the longest in the batch)."""

    tokenizer: Any
    max_length: int = DEFAULT_MAX_LENGTH
    column: str = "text"

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts → model kwargs."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Dataset rows (dicts with a text column) → model kwargs; a DataLoader collate_fn."""
        return self.encode([row[self.column] for row in rows])


def _image_stats(path: str) -> tuple[Sequence[float], Sequence[float]]:
    """The model's image processor mean/std, or ImageNet's when it has none."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except Exception as err:  # no processor config: a plain model directory or offline hub id
        log.info("no image processor for %s (%s); using ImageNet mean/std", path, err)
        return IMAGENET_MEAN, IMAGENET_STD


def _modality(dataset: Any) -> str | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, Mapping):  # DatasetDict: column names per split
        names = next(iter(names.values()), [])
    if names and "image" in names:
        return "image"
    if names and "text" in names:
        return "text"
    return None


def model_modality(name: str) -> str | None:
    """Model name → `"image"` or `"text"` without loading weights: a built-in name's, or what a local
    Hugging Face directory's config.json says (`image_size` → image, else `vocab_size` → text); None
    when it cannot be told (a hub id, a config with neither)."""
    import json
    from pathlib import Path

    if name in assets.MODELS:
        return assets.MODELS[name]
    config = Path(os.path.expanduser(name)) / "config.json"
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, Mapping):
        return None
    raw = raw.get("vision_config", raw) if isinstance(raw.get("vision_config"), Mapping) else raw
    if "image_size" in raw:
        return "image"
    return "text" if "vocab_size" in raw else None


def dataset_modality(dataset: Any, name: str | None = None) -> str | None:
    """A built-in dataset name's modality, else the dataset's columns' (`image` or `text`); None if unknown."""
    return assets.DATASETS.get(name) if name in assets.DATASETS else _modality(dataset)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_modality(model: str, dataset: Any, data_name: str | None = None) -> None:
    """A model that takes images given text data (or the reverse) → `AssetError` before any work."""
    want, have = model_modality(model), dataset_modality(dataset, data_name)
    if want is None or have is None or want == have:
        return
    fits = sorted(n for n, kind in assets.DATASETS.items() if kind == want)
    others = sorted(n for n, kind in assets.MODELS.items() if kind == have)
    data = f"the data set {data_name!r}" if data_name else "the data set"
    raise AssetError(f"model {model!r} takes {want} input but {data} holds {have} rows: pass {_a(want)} data set "
                     f"(built-in: {', '.join(fits)}) or {_a(have)} model (built-in: {', '.join(others)})")


def check_image_size(model: torch.nn.Module, size: int, option: str = "size") -> None:
    """An image side below the model's patch size → `CalibrationError` before any capture."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    patch = getattr(config, "patch_size", None)
    if getattr(config, "image_size", None) is None or patch is None:  # not a vision model with patches
        return
    patch = max(patch) if isinstance(patch, (list, tuple)) else int(patch)
    if size < patch:
        raise CalibrationError(f"{option} {size}: image smaller than the patch size {patch} of the model; give "
                               f"{option} >= {patch} (a multiple of {patch}, e.g. {4 * patch})")


def make_preprocessor(model_name_or_processor: Any, *, dataset: Any = None,
                      size: int = DEFAULT_IMAGE_SIZE, max_length: int = DEFAULT_MAX_LENGTH):
    """Model name / HF directory / tokenizer / preprocessor → a collate function (rows → kwargs).

    A built-in name chooses by its modality; otherwise the dataset's columns do (`image` →
    images, `text` → the model's tokenizer). A tokenizer object is wrapped as it is.
    """
    proc = model_name_or_processor
    if isinstance(proc, (ImagePreprocessor, TextPreprocessor)):
        return proc
    if not isinstance(proc, str):
        if callable(proc) and hasattr(proc, "pad_token"):  # a transformers tokenizer
            return TextPreprocessor(proc, max_length=max_length)
        if hasattr(proc, "image_mean") and hasattr(proc, "image_std"):  # an HF image processor
            return ImagePreprocessor(size, tuple(proc.image_mean), tuple(proc.image_std))
        raise TypeError(
            f"cannot build a preprocessor from {type(proc).__name__}: pass a model name, a model "
            "directory, a transformers tokenizer or image processor, or an fxapprox preprocessor"
        )
    kind = assets.MODELS.get(proc) or _modality(dataset)
    if kind is None:
        raise ValueError(
            f"cannot tell whether {proc!r} takes images or text: pass the dataset (a column named "
            "'image' or 'text') or a tokenizer / image processor object"
        )
    path = assets.model_path(proc)
    if kind == "image":
        mean, std = _image_stats(path)
        return ImagePreprocessor(size, mean, std)
    from transformers import AutoTokenizer

    return TextPreprocessor(AutoTokenizer.from_pretrained(path), max_length=max_length)


def _split(dataset: Any, split: str):
    if isinstance(dataset, Mapping) or hasattr(dataset, "keys"):
        if split not in dataset:
            raise KeyError(f"dataset has no split {split!r}; it has {sorted(dataset.keys())}")
        return dataset[split]
    return dataset


def random_subset(dataset: Any, num_samples: int | None, *, seed: int = 0):
    """Uniformly random subset of `num_samples` rows without replacement (seeded); None → all."""
    n = len(dataset)
    if num_samples is None or num_samples >= n:
        if num_samples is not None and num_samples > n:
            log.warning("asked for %d samples, the split has only %d; using all", num_samples, n)
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num_samples]
    return dataset.select(sorted(order.tolist()))


def data_loader(model_name_or_processor: Any, dataset: Any, *, split: str = "test",
                num_samples: int | None = None, batch_size: int = 64,
                size: int = DEFAULT_IMAGE_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
                seed: int = 0, with_labels: bool = False) -> torch.utils.data.DataLoader:
    """(Subset of) one split → DataLoader of model kwargs; `with_labels` adds a `labels` tensor."""
    rows = random_subset(_split(dataset, split), num_samples, seed=seed)
    proc = make_preprocessor(model_name_or_processor, dataset=rows, size=size, max_length=max_length)

    def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        out = proc(batch)
        if with_labels:
            out["labels"] = torch.tensor([row["label"] for row in batch], dtype=torch.long)
        return out

    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate)


def calibration_loader(model_name_or_processor: Any, dataset: Any, *, split: str = "train",
                       num_samples: int = 500, batch_size: int = 32,
                       size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                       max_length: int = DEFAULT_MAX_LENGTH) -> torch.utils.data.DataLoader:
    """Seeded uniformly random `num_samples` rows of `split` → batches of model kwargs.

    The papers draw their calibration samples at random from the training split; the loader is
    re-iterable and yields the same batches each time.
    """
    return data_loader(model_name_or_processor, dataset, split=split, num_samples=num_samples,
                       batch_size=batch_size, size=size, max_length=max_length, seed=seed)

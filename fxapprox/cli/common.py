"""Arguments shared by the subcommands (model, data set, calibration subset) → loaded objects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_model_data_args", "add_units_arg", "load_model_and_calibration", "write_json"]


def add_model_data_args(p: argparse.ArgumentParser, *, samples: int) -> None:
    """MODEL, --data, --split, --samples, --batch-size, --image-size, --seed, --blocks, --no-progress."""
    p.add_argument("model", help="built-in model name (dinov2-small, minilm-l6), Hugging Face model "
                   "directory or hub id")
    p.add_argument("--data", required=True, help="built-in dataset name (mnist-5k, fashion-mnist, "
                   "rotten-tomatoes), save_to_disk directory, Fashion-MNIST idx directory or hub id")
    p.add_argument("--split", default="train", help="split to draw calibration samples from (default: train)")
    p.add_argument("--samples", type=int, default=samples, help=f"calibration samples (default: {samples})")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default: 32)")
    p.add_argument("--image-size", type=int, default=112, help="image side in pixels (default: 112)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset (default: 0)")
    p.add_argument("--blocks", default=None, help="dotted path of the block ModuleList (default: found)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_units_arg(p: argparse.ArgumentParser) -> None:
    """--units block|half: what span indices count (half: boundary 2k = block k after attention, 2k+1 its output)."""
    p.add_argument("--units", choices=("block", "half"), default="block",
                   help="span units: whole blocks, or half blocks (attention branch, MLP branch): boundaries "
                   "-1..2L-1, 2k = block k's stream after its attention branch, 2k+1 its output; s-e replaces "
                   "units s+1..e (default: block)")


def load_model_and_calibration(args: argparse.Namespace, extra_samples: int = 0) -> tuple[Any, Any, Any]:
    """Parsed arguments → (model, dataset, loader of `--samples` + `extra_samples` samples)."""
    from fxapprox.study import assets, data

    model = assets.load_model(args.model)
    dataset = assets.load_dataset(args.data)
    loader = data.calibration_loader(args.model, dataset, split=args.split,
                                     num_samples=args.samples + extra_samples,
                                     batch_size=args.batch_size, size=args.image_size, seed=args.seed)
    return model, dataset, loader


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")

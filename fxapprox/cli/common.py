"""Arguments shared by the subcommands (model, data set, calibration subset) → loaded objects;
argument types that answer a bad value in one line; output directories checked before any work."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fxapprox.errors import AssetError, OutputExistsError, SpanError

__all__ = ["add_model_data_args", "add_units_arg", "load_model_and_calibration", "write_json", "positive_int",
           "nonnegative_int", "spans_arg", "SPANS_HELP", "check_split", "check_out_dir", "quiet_progress", "stage"]

SPANS_HELP = ("spans to replace, format s-e[,s-e...], e.g. 9-11 or 3-4,9-11 (s-e replaces blocks s+1..e, or "
              "units with --units half; -1-e or m1-e starts at the embeddings)")


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give a whole number >= {minimum}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def spans_arg(text: str) -> list[tuple[int, int]]:
    """argparse type: `s-e[,s-e...]` → spans, with the format in the error."""
    from fxapprox.spans import parse_spans

    try:
        spans = parse_spans(text)
    except SpanError:
        spans = []
    if not spans:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as spans: write s-e[,s-e...], e.g. 9-11 or 3-4,9-11 "
            "(s-e replaces blocks s+1..e; -1-0 or m1-0 starts at the embeddings)")
    return spans


def add_model_data_args(p: argparse.ArgumentParser, *, samples: int) -> None:
    """MODEL, --data, --split, --samples, --batch-size, --image-size, --seed, --blocks, --no-progress."""
    p.add_argument("model", help="built-in model name (dinov2-small, minilm-l6), Hugging Face model "
                   "directory or hub id")
    p.add_argument("--data", required=True, help="built-in dataset name (mnist-5k, fashion-mnist, "
                   "rotten-tomatoes), save_to_disk directory, Fashion-MNIST idx directory or hub id")
    p.add_argument("--split", default="train", help="split to draw calibration samples from (default: train)")
    p.add_argument("--samples", type=positive_int, default=samples, help=f"calibration samples (default: {samples})")
    p.add_argument("--batch-size", type=positive_int, default=32, help="calibration batch size (default: 32)")
    p.add_argument("--image-size", type=positive_int, default=112, help="image side in pixels (default: 112)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset (default: 0)")
    p.add_argument("--blocks", default=None, help="dotted path of the block ModuleList (default: found)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (also transformers' and "
                   "datasets')")


def quiet_progress() -> None:
    """Hide the progress bars of transformers (weight loading) and datasets."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def stage(command: str, text: str) -> None:
    """One progress line of a multi-stage command, on stderr."""
    print(f"[fxapprox {command}] {text} ...", file=sys.stderr, flush=True)


def add_units_arg(p: argparse.ArgumentParser) -> None:
    """--units block|half: what span indices count (half: boundary 2k = block k after attention, 2k+1 its output)."""
    p.add_argument("--units", choices=("block", "half"), default="block",
                   help="span units: whole blocks, or half blocks (attention branch, MLP branch): boundaries "
                   "-1..2L-1, 2k = block k's stream after its attention branch, 2k+1 its output; s-e replaces "
                   "units s+1..e (default: block)")


def load_model_and_calibration(args: argparse.Namespace, extra_samples: int = 0, *,
                               at_most_extra: bool = False) -> tuple[Any, Any, Any]:
    """Parsed arguments → (model, dataset, loader of `--samples` + `extra_samples` samples).

    `at_most_extra`: take fewer extra samples when the split holds fewer after `--samples` (and
    store the number taken as `args.extra_samples`); otherwise `args.extra_samples = extra_samples`.
    """
    from fxapprox.study import assets, data

    if args.no_progress:
        quiet_progress()
    dataset = assets.load_dataset(args.data)  # first: a wrong data name is answered before the model loads
    check_split(dataset, args.split, "--split")
    if at_most_extra and hasattr(dataset, "keys"):
        extra_samples = max(0, min(extra_samples, len(dataset[args.split]) - args.samples))
    args.extra_samples = extra_samples
    model = assets.load_model(args.model)
    loader = data.calibration_loader(args.model, dataset, split=args.split,
                                     num_samples=args.samples + extra_samples,
                                     batch_size=args.batch_size, size=args.image_size, seed=args.seed)
    return model, dataset, loader


def check_split(dataset: Any, split: str, option: str) -> None:
    """A split name the dataset lacks → an error that lists the ones it has."""
    names = sorted(dataset.keys()) if hasattr(dataset, "keys") else None
    if names is not None and split not in names:
        raise AssetError(f"the dataset has no split {split!r}: pass {option} with one of {', '.join(names)}")


def check_out_dir(path: str | Path, overwrite: bool) -> Path:
    """Check an output directory before any work (creates nothing): refuse a file, or a non-empty
    directory unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a directory: choose another --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        held = "a plan" if (path / "plan.json").is_file() else "files"
        raise OutputExistsError(f"{path} already holds {held}; choose another --out or pass --overwrite")
    return path


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON, creating the parent directory."""
    from fxapprox.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

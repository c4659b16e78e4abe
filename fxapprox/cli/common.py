"""Arguments shared by the subcommands (model, data set, calibration subset) → loaded objects;
argument types that answer a bad value in one line (every count, fraction and list of counts goes
through `positive_int`, `nonnegative_int`, `nonnegative_float`, `positive_ints`, `optional_positive_ints`
or `ints`); output files and directories checked before any work."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fxapprox.errors import AssetError, OutputExistsError, SpanError

__all__ = ["add_model_data_args", "add_units_arg", "load_model_and_calibration", "write_json", "positive_int",
           "nonnegative_int", "nonnegative_float", "positive_float", "fraction", "positive_ints",
           "optional_positive_ints", "ints", "spans_arg", "SPANS_HELP", "check_split", "check_out_dir",
           "check_out_file", "check_output_files", "OUTPUT_FILE_OPTIONS", "output_parent", "quiet_progress", "stage"]

# options that name a file a subcommand writes: checked before the subcommand runs (`check_output_files`)
OUTPUT_FILE_OPTIONS = ("json", "heatmap", "markdown", "onnx")

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


def _number(text: str, within: Callable[[float], bool], expected: str, example: str) -> float:
    """argparse type core: a finite float for which `within` holds, else a message naming `expected`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give {expected}, e.g. {example}") from None
    if not math.isfinite(value) or not within(value):
        raise argparse.ArgumentTypeError(f"{text} is out of range: give {expected}, e.g. {example}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, lambda v: v >= 0, "a finite number >= 0", "0.01")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, lambda v: v > 0, "a finite number > 0", "0.01")


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1), e.g. a budget."""
    return _number(text, lambda v: 0 < v < 1, "a fraction in (0, 1)", "0.25 (a quarter)")


def _int_list(text: str, minimum: int | None, *, empty: bool) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",")]
    if items == [""] and empty:
        return ()
    fix = (f"give comma-separated whole numbers{f' >= {minimum}' if minimum is not None else ''}, "
           f"e.g. {'1,8,32' if minimum else '0,1,2'}")
    where = f" in {text!r}" if len(items) > 1 else ""
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}{where} is not a whole number: {fix}") from None
        if minimum is not None and values[-1] < minimum:
            raise argparse.ArgumentTypeError(f"{values[-1]}{where} is too small: {fix}")
    return tuple(values)


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: `1,8,32` → integers >= 1 (at least one)."""
    return _int_list(text, 1, empty=False)


def optional_positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: `1,8,32` → integers >= 1; `''` → none."""
    return _int_list(text, 1, empty=True)


def ints(text: str) -> tuple[int, ...]:
    """argparse type: `0,1,2` → integers (at least one), e.g. seeds."""
    return _int_list(text, None, empty=False)


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
    for s, e in spans:
        if not -1 <= s < e:
            raise argparse.ArgumentTypeError(f"span {s}-{e} replaces nothing: s-e needs -1 <= s < e (it replaces "
                                             "blocks s+1..e), e.g. 9-11")
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
    data.check_modality(args.model, dataset, args.data)
    if at_most_extra and hasattr(dataset, "keys"):
        extra_samples = max(0, min(extra_samples, len(dataset[args.split]) - args.samples))
    args.extra_samples = extra_samples
    model = assets.load_model(args.model)
    data.check_image_size(model, args.image_size, "--image-size")
    loader = data.calibration_loader(args.model, dataset, split=args.split,
                                     num_samples=args.samples + extra_samples,
                                     batch_size=args.batch_size, size=args.image_size, seed=args.seed)
    return model, dataset, loader


def check_split(dataset: Any, split: str, option: str) -> None:
    """A split name the dataset lacks → an error that lists the ones it has."""
    names = sorted(dataset.keys()) if hasattr(dataset, "keys") else None
    if names is not None and split not in names:
        raise AssetError(f"the dataset has no split {split!r}: pass {option} with one of {', '.join(names)}")


def _check_creatable(path: Path, option: str) -> None:
    """`path` does not exist: its nearest existing ancestor must be a directory this process may write into."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputExistsError(f"{option} {path}: {ancestor} is a file, so no directory can be made under it; "
                                f"choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: cannot create files in {ancestor} (permission denied); "
                              f"choose another {option}")


def check_out_file(path: str | Path, option: str) -> Path:
    """Check a file a command will write before any work (creates nothing): not a directory, and its
    directory exists or can be made."""
    path = Path(path)
    if path.is_dir():
        suffix = {"--heatmap": ".png", "--markdown": ".md", "--onnx": ".onnx"}.get(option, ".json")
        raise OutputExistsError(f"{option} {path} is a directory; give a file path, e.g. {path / 'out'}{suffix}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{option} {path} cannot be overwritten (permission denied); choose another {option}")
    else:
        _check_creatable(path, option)
    return path


def check_output_files(args: argparse.Namespace) -> None:
    """Every output file option the subcommand was given (`OUTPUT_FILE_OPTIONS`) checked by `check_out_file`."""
    for name in OUTPUT_FILE_OPTIONS:
        value = getattr(args, name, None)
        if value:
            check_out_file(value, f"--{name}")


@contextmanager
def output_parent(path: str | Path) -> Iterator[None]:
    """The missing directories above `path` made for the writes in the block, and removed again
    (while still empty) when the block fails."""
    made = []
    parent = Path(path).parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    for directory in reversed(made):
        directory.mkdir()
    try:
        yield
    except BaseException:
        for directory in made:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def check_out_dir(path: str | Path, overwrite: bool) -> Path:
    """Check an output directory before any work (creates nothing): refuse a file, a non-empty
    directory unless `overwrite`, or one that cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a directory: choose another --out")
    if not path.exists():
        _check_creatable(path, "--out")
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

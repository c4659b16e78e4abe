"""Generated argument lists for every `fxapprox` subcommand → `fxapprox.cli.main(argv)` in-process ends in
exit 0, or exit 2 with exactly one `error:` line and no traceback, and writes nothing on error.

Each case is the subcommand's required arguments plus a few options, each with a value it accepts or
one it must refuse (negative or zero counts, words for numbers, unknown choices, output paths that
are directories or lie under a file, plan directories that are not plans, ONNX files that are not
ONNX), and sometimes a required argument dropped or an unknown option added. Loading a model or a
data set is replaced by a sentinel: a case with a refused value must be answered before it, and a
case without one stops there (the work itself is not what is tested here). Hypothesis runs
derandomized (a fixed seed), so CI sees the same cases every run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxapprox.cli import main
from fxapprox.metrics import METRIC_INFO
from fxapprox.study import assets

CASES = 400  # generated argument lists per run

WORDS = ["x", "1.5", "1e3", "0x10", "nan", "one", "7a", "1,2"]  # none is a whole number


class LoaderReached(Exception):
    """A model or data set was about to load: every up-front check let the arguments through."""


def _reached(name, *args, **kwargs):
    raise LoaderReached(name)


@dataclass(frozen=True)
class Arg:
    """One generated argument: its tokens, whether the command must refuse it before any work, and
    whether leaving it out must be refused."""

    tokens: tuple[str, ...]
    bad: bool
    required: bool = False


def _required_arg(arg: Arg) -> Arg:
    return Arg(arg.tokens, arg.bad, True)


def _option(flag: str, good: st.SearchStrategy[str], bad: st.SearchStrategy[str] | None = None):
    """`--flag=value` (or `--flag value` for values not starting with '-') with a good or a bad value."""
    def tokens(value: str, equals: bool) -> tuple[str, ...]:
        return (f"{flag}={value}",) if equals or value.startswith("-") or not value else (flag, value)

    goods = st.builds(lambda v, eq: Arg(tokens(v, eq), False), good, st.booleans())
    if bad is None:
        return goods
    bads = st.builds(lambda v, eq: Arg(tokens(v, eq), True), bad, st.booleans())
    # mostly good values, so that a case's one wrong value is what is answered
    return st.integers(0, 3).flatmap(lambda pick: bads if pick == 0 else goods)


def _flag(flag: str):
    return st.just(Arg((flag,), False))


def _ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


POSITIVE = (_ints(1, 10**6), st.one_of(_ints(-10**6, 0), st.sampled_from(WORDS)))
NONNEGATIVE = (_ints(0, 10**6), st.one_of(_ints(-10**6, -1), st.sampled_from(WORDS)))
SEED = (_ints(-10**6, 10**6), st.sampled_from(WORDS[:-1]))
FRACTION = (st.floats(0, 10, allow_nan=False).map(repr),
            st.one_of(st.floats(-10, -1e-9).map(repr), st.sampled_from(["nan", "inf", "-inf", "x", "1,2"])))
POSITIVE_LIST = (st.lists(st.integers(1, 512), min_size=1, max_size=4).map(lambda v: ",".join(map(str, v))),
                 st.one_of(st.lists(st.integers(-5, 0), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
                           st.sampled_from(["1,x", "a,b", "8,", "1.5", ",", "1,,2"])))
BUDGET = (st.floats(0.01, 0.99).map(repr), st.sampled_from(["0", "1", "1.5", "-0.1", "x", "nan"]))
POSITIVE_FLOAT = (st.floats(1e-3, 1e3).map(repr), st.sampled_from(["0", "-1", "x", "nan", "inf"]))
OPTIONAL_POSITIVE_LIST = (st.one_of(st.just(""), POSITIVE_LIST[0]), POSITIVE_LIST[1])
SEEDS = (st.lists(st.integers(-9, 99), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
         st.sampled_from(["a,b", "1,x", "0.5", ",", "1,,2"]))
SPANS = (st.sampled_from(["0-1", "1-3", "3-4,9-11", "-1-0", "m1-0", "2-5"]),
         st.sampled_from(["3", "a-b", "", "1-", "-", ",", "x-1", "5-2", "2-2"]))
TEXT = st.text(st.sampled_from("abcxyz019_./~ "), min_size=1, max_size=12).filter(lambda t: not t.startswith("-"))
NAME = st.one_of(st.sampled_from(["dinov2-small", "minilm-l6", "owner/model", "./missing", "~/nowhere"]), TEXT)
DATA = st.one_of(st.sampled_from(["mnist-5k", "fashion-mnist", "rotten-tomatoes", "./missing"]), TEXT)
OUT_FILE = (st.sampled_from(["out.json", "new/sub/out.json", "emptydir/r.json"]),
            st.sampled_from(["adir", "emptydir", ".", "afile/x.json", "afile/deeper/x.json"]))
NEW_DIR = st.sampled_from(["newout", "new/deeper", "emptydir"])
BAD_DIR = st.sampled_from(["afile", "afile/sub"])


def _choice(flag: str, choices) -> st.SearchStrategy[Arg]:
    return _option(flag, st.sampled_from(list(choices)), st.sampled_from(["bogus", "LINEAR", " all", "none", ""]))


def _model_data() -> list[st.SearchStrategy[Arg]]:
    return [_option("--split", TEXT), _option("--samples", *POSITIVE), _option("--batch-size", *POSITIVE),
            _option("--image-size", *POSITIVE), _option("--seed", *SEED), _option("--blocks", TEXT),
            _flag("--no-progress")]


UNITS = _choice("--units", ["block", "half"])
OPTIONS: dict[str, list[st.SearchStrategy[Arg]]] = {
    "analyze": [*_model_data(), _choice("--tokens", ["cls", "mean", "all"]), _choice("--metric", METRIC_INFO),
                _option("--holdout-folds", st.sampled_from(["0", "2", "5"]), st.sampled_from(["1", "-2", "x"])),
                _option("--output-samples", *NONNEGATIVE), _option("--output-max-len", *NONNEGATIVE),
                _choice("--output-target", ["auto", "logits", "features"]), UNITS, _option("--top", *POSITIVE),
                _option("--span-len", *POSITIVE), _option("--json", *OUT_FILE), _option("--heatmap", *OUT_FILE),
                _choice("--heatmap-metric", METRIC_INFO), _option("--markdown", *OUT_FILE)],
    "compress": [*_model_data(), _choice("--transform", ["linear", "identity", "auto", "mlp"]),
                 _option("--auto-tolerance", *FRACTION), _option("--ridge", *FRACTION), UNITS,
                 _choice("--metric", METRIC_INFO), _choice("--selection", ["dp", "iterative", "topk", "lowest"]),
                 _choice("--prior", ["zero", "identity"]), _choice("--refit", ["independent", "sequential"]),
                 _flag("--fold"), _option("--json", *OUT_FILE), _option("--budget", *BUDGET),
                 _option("--param-budget", *BUDGET),
                 st.builds(lambda p: Arg(("--config", p), True), st.sampled_from(["afile", "nosuch.json", "adir",
                                                                                   "badplan"])),
                 _choice("--refine", ["output"]), _choice("--refine-params", ["maps", "maps+norms", "all"]),
                 _choice("--refine-rows", ["tokens", "pooled", "tokens+pooled"]),
                 _option("--refine-steps", *POSITIVE), _option("--refine-time", *POSITIVE_FLOAT),
                 _option("--refine-lr", *POSITIVE_FLOAT), _option("--refine-warmup", *NONNEGATIVE),
                 _option("--mlp-fraction", *POSITIVE_FLOAT)],
    "eval": [*_model_data(), _choice("--transform", ["linear", "identity"]), _option("--metric", TEXT),
             _option("--train-samples", *NONNEGATIVE), _option("--test-samples", *NONNEGATIVE),
             _option("--test-split", TEXT), _option("--probe-seeds", *SEEDS), _option("--epochs", *POSITIVE),
             _option("--eval-batch-size", *POSITIVE), _option("--json", *OUT_FILE),
             st.builds(lambda p: Arg(("--plan", p), True), st.sampled_from(["nosuch", "afile", "adir", "badplan"]))],
    "export": [_option("--model", NAME), _option("--batch-size", *POSITIVE), _option("--image-size", *POSITIVE),
               _option("--seq-len", *POSITIVE), _option("--opset", *POSITIVE), _flag("--static-batch"),
               _flag("--no-check"), _flag("--optimize"), _choice("--precision", ["fp32", "fp16", "int8"]),
               _option("--json", *OUT_FILE)],
    "bench": [_option("--batch-sizes", *POSITIVE_LIST), _option("--providers", st.just("cpu"),
                                                                st.sampled_from(["tpu", "", ",", "cuda,tpu"])),
              _option("--threads", *POSITIVE), _option("--warmup", *NONNEGATIVE), _option("--iters", *POSITIVE),
              _choice("--baseline", ["as-given", "optimized"]), _choice("--precision", ["fp32", "fp16", "int8"]),
              _option("--batch-size", *POSITIVE), _option("--seq-len", *POSITIVE), _option("--json", *OUT_FILE),
              _flag("--torch"), _flag("--compile"),
              _option("--torch-precisions", st.sampled_from(["fp32", "fp32,bf16-autocast", "bf16,fp16"]),
                      st.sampled_from(["fp8", "", ",", "fp32,x"]))],
    "demo": [_option("--model", st.sampled_from(["dinov2-small", "owner/model"])),
             _option("--data", st.sampled_from(["mnist-5k", "fashion-mnist"])), _option("--size", *POSITIVE),
             _option("--samples", *POSITIVE), _option("--num-blocks", *POSITIVE),
             _option("--metric", st.sampled_from([m for m in METRIC_INFO if m != "heldout"]),
                     st.sampled_from(["bogus", "heldout", ""])),
             _flag("--full"), _flag("--overwrite")],
    "select-eval": [_option("--samples", *POSITIVE), _option("--train", *NONNEGATIVE),
                    _option("--test", *NONNEGATIVE), _option("--size", *POSITIVE), _option("--max-len", *POSITIVE),
                    _option("--batch-size", *POSITIVE), _option("--epochs", *POSITIVE), _flag("--no-identity"),
                    _option("--sample-sizes", *OPTIONAL_POSITIVE_LIST), _option("--ablation-spans", *SPANS),
                    _option("--selection-blocks", *OPTIONAL_POSITIVE_LIST), _option("--bootstrap", *POSITIVE),
                    UNITS],
    "frontier": [_option("--json", *OUT_FILE), _flag("--quick"),
                 _option("--budgets", st.sampled_from(["0.08", "0.08,0.25", "0.5"]),
                         st.sampled_from(["0", "1.5", "x", "", "-0.1"])),
                 _option("--methods", st.sampled_from(["papers", "papers,fxapprox", "shortgpt,replaceme"]),
                         st.sampled_from(["bogus", "", "papers,bogus"])),
                 _option("--samples", *POSITIVE), _option("--train", *NONNEGATIVE), _option("--test", *NONNEGATIVE),
                 _option("--size", *POSITIVE), _flag("--retrain"), _flag("--no-retrain"),
                 _option("--bench-iters", *POSITIVE), _flag("--overwrite"), _flag("--keep-onnx")],
}


def _required(command: str) -> st.SearchStrategy[list[Arg]]:
    """The subcommand's required arguments (and demo's --out, eval's span choice), good or bad."""
    model = st.builds(lambda n: Arg((n,), False, True), NAME)
    data = _option("--data", DATA).map(_required_arg)
    out_dir = st.one_of(st.builds(lambda d: Arg(("--out", d), False, True), NEW_DIR),
                        st.builds(lambda d: Arg(("--out", d), True, True), BAD_DIR),
                        st.just(Arg(("--out", "adir"), True, True)))  # non-empty: refused unless --overwrite
    if command == "analyze":
        return st.tuples(model, data).map(list)
    if command == "eval":
        which = st.one_of(st.just(Arg((), False)), _option("--spans", *SPANS), _option("--num-blocks", *POSITIVE))
        return st.tuples(model, data, which).map(list)
    if command == "compress":
        which = st.one_of(_option("--spans", *SPANS), _option("--num-blocks", *POSITIVE)).map(_required_arg)
        return st.tuples(model, data, which, out_dir).map(list)
    if command == "export":
        source = st.one_of(model, st.sampled_from([Arg((p,), True, True) for p in ("adir", "badplan", "afile",
                                                                                    "bad.onnx")]))
        onnx = _option("--onnx", st.sampled_from(["x.onnx", "new/x.onnx"]), st.sampled_from(["adir", "afile/x.onnx"]))
        return st.tuples(source, onnx.map(_required_arg)).map(list)
    if command == "bench":  # one target or two, all .onnx files or all models
        onnx = st.sampled_from([Arg((p,), True) for p in ("bad.onnx", "empty.onnx", "nosuch.onnx")])
        models = st.builds(lambda n: Arg((n,), False), NAME)
        return st.one_of(st.lists(models, min_size=1, max_size=2), st.lists(onnx, min_size=1, max_size=2),
                         st.tuples(models, onnx).map(list),
                         st.lists(models, min_size=3, max_size=3))  # three targets: refused (see `cases`)
    if command == "demo":
        return st.one_of(out_dir, st.just(Arg((), False))).map(lambda a: [Arg(a.tokens, a.bad)])
    if command == "select-eval":  # rewrites its report in place: a non-empty --out is taken
        out_dir = out_dir.map(lambda a: Arg(a.tokens, a.bad and a.tokens != ("--out", "adir"), True))
    return st.tuples(model, data, out_dir).map(list)  # select-eval, frontier


@st.composite
def cases(draw) -> tuple[list[str], bool]:
    """One argument list and whether it holds something the command must refuse before any work."""
    command = draw(st.sampled_from(sorted(OPTIONS)))
    args = draw(_required(command))
    options = draw(st.lists(st.one_of(OPTIONS[command]), max_size=4))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "unknown"]))
    if mutation == "drop":
        dropped = args.pop(draw(st.integers(0, len(args) - 1)))
        if dropped.required or (command == "bench" and not args):
            args.append(Arg((), True))
    elif mutation == "unknown":
        args.append(Arg(("--bogus-option",), True))
    argv = [command] + [t for a in args + options for t in a.tokens]
    if "--overwrite" in argv:  # a non-empty --out is then taken
        args = [Arg(a.tokens, False) if a.tokens == ("--out", "adir") else a for a in args]
    bad = any(a.bad for a in args + options)
    if command == "bench" and sum(1 for a in args if a.tokens and not a.tokens[0].startswith("-")) > 2:
        bad = True  # bench takes one target or two
    return argv, bad


def _fixtures(root: Path) -> None:
    """What the generated paths refer to: a file, a non-empty and an empty directory, a plan directory
    whose plan.json is not JSON, an ONNX file that is not ONNX and an empty one."""
    (root / "afile").write_text("x")
    (root / "adir").mkdir()
    (root / "adir" / "notes.txt").write_text("keep")
    (root / "emptydir").mkdir()
    (root / "badplan").mkdir()
    (root / "badplan" / "plan.json").write_text("{not json")
    (root / "badplan" / "weights.safetensors").write_bytes(b"")
    (root / "bad.onnx").write_text("not a model")
    (root / "empty.onnx").write_bytes(b"")


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@contextlib.contextmanager
def _in_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def test_generated_argument_lists_end_in_success_or_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(assets, "load_model", _reached)
    monkeypatch.setattr(assets, "load_dataset", _reached)
    monkeypatch.delenv("FXAPPROX_DEBUG", raising=False)
    outcomes: dict[str, int] = {"refused": 0, "reached the loaders": 0, "exit 0": 0}
    start = time.perf_counter()

    @settings(max_examples=CASES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def check(case: tuple[list[str], bool]) -> None:
        argv, bad = case
        with tempfile.TemporaryDirectory() as tmp, _in_directory(Path(tmp)):
            root = Path(tmp)
            _fixtures(root)
            before = _listing(root)
            capsys.readouterr()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
            except LoaderReached:
                assert not bad, f"{argv}: the wrong argument was not answered before loading"
                assert _listing(root) == before, f"{argv}: wrote files before any work"
                outcomes["reached the loaders"] += 1
                return
            err = capsys.readouterr().err
            assert "Traceback" not in err, f"{argv}: {err}"
            assert code in (0, 2), f"{argv} → exit {code}: {err}"
            if code == 0:
                assert not bad, f"{argv}: accepted"
                outcomes["exit 0"] += 1
                return
            lines = err.strip().splitlines()
            errors = [line for line in lines if ": error: " in line]
            assert len(errors) == 1 and lines[-1] == errors[0], f"{argv}: {err}"
            assert errors[0].startswith(("fxapprox: error: ", f"fxapprox {argv[0]}: error: ")), errors[0]
            assert _listing(root) == before, f"{argv}: wrote files on an error"
            outcomes["refused"] += 1

    check()
    seconds = time.perf_counter() - start
    total = sum(outcomes.values())
    print(f"CLI fuzz: {total} generated cases (hypothesis derandomized), {outcomes}, {seconds:.1f} s")
    assert total >= 150
    assert outcomes["refused"] >= 50 and outcomes["reached the loaders"] >= 30  # both kinds of case were made


@pytest.mark.parametrize("argv", [
    ["demo", "--out", "adir"],
    ["compress", "m", "--data", "d", "--spans", "5-2", "--out", "o"],
    ["bench", "bad.onnx", "--baseline", "optimized"],  # was a DecodeError traceback
    ["bench", "empty.onnx", "bad.onnx", "--baseline=optimized"],
])
def test_fixed_cases_are_refused_with_one_line(argv, monkeypatch, capsys, tmp_path):
    """Cases the generator makes rarely (or found before): refused with one line, nothing loaded or written."""
    monkeypatch.setattr(assets, "load_model", _reached)
    monkeypatch.setattr(assets, "load_dataset", _reached)
    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert _listing(tmp_path) == before

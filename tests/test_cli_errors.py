"""Bad input to the `fxapprox` command line → exit code 2 and one error line naming the problem and
the fix: no traceback, nothing written (issue 12, items 1–7). Each case runs the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import image_dataset_dir, vit_dir
from export_helpers import IMAGE

from fxapprox.cli import _join_dash_values, build_parser


def _fxapprox(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxapprox", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FXAPPROX_DEBUG": "", **(env or {})})


def _error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """Exit code 2, no traceback, exactly one error line (argparse's usage may precede it) → that line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"fxapprox {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), proc.stderr
    return errors[0]


def _listing(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def test_bench_on_a_file_that_is_not_onnx(tmp_path):  # item 1
    (tmp_path / "notonnx.onnx").write_text("not a model\n")
    before = _listing(tmp_path)
    line = _error_line(_fxapprox("bench", "notonnx.onnx", cwd=tmp_path), "bench")
    assert "notonnx.onnx is not an ONNX model" in line and "`fxapprox export`" in line
    assert _listing(tmp_path) == before


def test_zero_samples_is_refused_by_the_parser(tmp_path):  # item 2
    line = _error_line(_fxapprox("compress", "dinov2-small", "--data", "mnist-5k", "--samples", "0",
                                 "--spans", "0-1", "--out", "plan", cwd=tmp_path), "compress")
    assert "--samples: 0 is too small: give a whole number >= 1" in line
    assert _listing(tmp_path) == set()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline", "unreachable"])
def test_mistyped_model_name_is_answered_at_once(tmp_path, env):  # item 3
    proc = _fxapprox("analyze", "no-such-model", "--data", "mnist-5k", cwd=tmp_path, env=env)
    line = _error_line(proc, "analyze")
    assert "'no-such-model' is not a built-in name (dinov2-small, minilm-l6)" in line
    assert "Hub cannot be reached" in line and "check the spelling" in line
    assert "Retrying" not in proc.stderr  # the Hub client's retry loop never started
    assert _listing(tmp_path) == set()


def test_compress_checks_its_output_directory_before_any_work(tmp_path):  # item 4
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    before = _listing(tmp_path)
    # the model name does not exist: the answer is about --out, so it came before loading anything
    line = _error_line(_fxapprox("compress", "no-such-model", "--data", "mnist-5k", "--num-blocks", "1",
                                 "--out", "out", cwd=tmp_path), "compress")
    assert "out already holds files; choose another --out or pass --overwrite" in line
    (tmp_path / "out" / "plan.json").write_text("{}")
    line = _error_line(_fxapprox("compress", "no-such-model", "--data", "mnist-5k", "--num-blocks", "1",
                                 "--out", "out", cwd=tmp_path), "compress")
    assert "out already holds a plan; choose another --out or pass --overwrite" in line
    assert _listing(tmp_path) == before | {Path("out/plan.json")}
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_frontier_keeps_an_earlier_report_unless_told(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "frontier.md").write_text("an earlier run")
    line = _error_line(_fxapprox("frontier", "no-such-model", "--data", "mnist-5k", "--out", "out", cwd=tmp_path),
                       "frontier")
    assert "out already holds files; choose another --out or pass --overwrite" in line
    assert (tmp_path / "out" / "frontier.md").read_text() == "an earlier run"
    # with --overwrite the check lets it through: the next answer is about the model
    line = _error_line(_fxapprox("frontier", "no-such-model", "--data", "mnist-5k", "--out", "out", "--overwrite",
                                 cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}), "frontier")
    assert "'no-such-model' is not a built-in name" in line


@pytest.mark.parametrize("command", ["export", "bench"])
def test_export_and_bench_say_what_they_expected(tmp_path, command):  # item 5
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "x.txt").write_text("x")
    before = _listing(tmp_path)
    extra = ["--onnx", "out.onnx"] if command == "export" else []
    line = _error_line(_fxapprox(command, "somedir", *extra, cwd=tmp_path), command)
    assert "somedir is a directory, not a plan directory (with plan.json) or a Hugging Face model directory" in line
    assert "pass a plan directory written by `fxapprox compress`" in line and ".onnx file" in line
    assert _listing(tmp_path) == before


def test_spans_without_a_dash_state_the_format(tmp_path):  # item 6
    line = _error_line(_fxapprox("compress", "dinov2-small", "--data", "mnist-5k", "--spans", "3",
                                 "--out", "plan", cwd=tmp_path), "compress")
    assert "argument --spans: cannot read '3' as spans: write s-e[,s-e...], e.g. 9-11" in line
    assert _listing(tmp_path) == set()


def test_spans_starting_at_the_embeddings_reach_the_command(tmp_path):  # item 6
    # `-1-0` is parsed (the error is the model's, not argparse's "expected one argument")
    line = _error_line(_fxapprox("compress", "./missing-model", "--data", "mnist-5k", "--spans", "-1-0",
                                 "--out", "plan", cwd=tmp_path), "compress")
    assert "'./missing-model': no such file or directory" in line


@pytest.mark.parametrize("spans", [["--spans", "-1-0"], ["--spans=-1-0"], ["--spans", "m1-0,3-4"],
                                   ["--spans", "-1-0,3-4"]])
def test_spans_at_the_embeddings_parse(spans):  # item 6
    args = build_parser().parse_args(_join_dash_values(["compress", "m", "--data", "d", "--out", "o", *spans]))
    assert args.spans[0] == (-1, 0)


@pytest.fixture(scope="module")
def nan_model_and_images(tmp_path_factory):
    """A tiny ViT directory whose blocks from 1 on output NaN, and a save_to_disk image dataset for it."""
    root = tmp_path_factory.mktemp("nan")
    return vit_dir(root / "vit", nan_from_block=1), image_dataset_dir(root / "images")


def test_non_finite_activations_keep_only_the_message(tmp_path, nan_model_and_images):  # item 7
    vit, images = nan_model_and_images
    line = _error_line(_fxapprox("compress", str(vit), "--data", str(images), "--samples", "4", "--spans", "0-2",
                                 "--image-size", str(IMAGE), "--no-progress", "--out", "plan", cwd=tmp_path),
                       "compress")
    assert "boundary H_2 (output of block 2) holds NaN or Inf" in line and "check the inputs' preprocessing" in line
    assert "While executing" not in line and "Original traceback" not in line
    assert _listing(tmp_path) == set()


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "notonnx.onnx").write_text("not a model\n")
    proc = _fxapprox("--debug", "bench", "notonnx.onnx", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ExportError" in proc.stderr


def test_a_split_the_dataset_lacks_is_named_before_the_model_loads(tmp_path, nan_model_and_images):
    _, images = nan_model_and_images
    line = _error_line(_fxapprox("analyze", "no-such-model", "--data", str(images), "--split", "validation",
                                 cwd=tmp_path), "analyze")
    assert "the dataset has no split 'validation': pass --split with one of train" in line

"""Bad input to the `fxapprox` command line → exit code 2 and one error line naming the problem and
the fix: no traceback, nothing written (issue 12, items 1–7; issue 23's CLI items). The issue-12 cases
run the CLI in a subprocess, the issue-23 ones `fxapprox.cli.main` in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import image_dataset_dir, vit_dir
from export_helpers import IMAGE, PATCH

import fxapprox
from fxapprox.cli import _join_dash_values, build_parser, main
from fxapprox.errors import AssetError, MissingScoreError, OutputExistsError
from fxapprox.study import assets
from fxapprox.study.demo import DemoConfig, _plot_heatmap, run_demo


def _fxapprox(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxapprox", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FXAPPROX_DEBUG": "", **(env or {})})


def _error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """Exit 2, no traceback, exactly one error line (argparse's usage or stage lines may precede it) → that line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"fxapprox {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert all(line.startswith(("usage:", " ", f"[fxapprox {command}] ")) for line in lines[:-1]), proc.stderr
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


# --- issue 23: the CLI items, in-process ------------------------------------------------------------

def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _main_error(argv: list[str], capsys) -> str:
    """`main(argv)` → exit 2, no traceback, exactly one error line (usage may precede it) → that line."""
    code, _, err = _run_main(argv, capsys)
    command = next(a for a in argv if not a.startswith("-"))
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"fxapprox {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or a data set fails the test: the answer must come before."""
    def refuse(name, *args, **kwargs):
        raise AssertionError(f"{name!r} was loaded although the arguments were wrong")

    monkeypatch.setattr(assets, "load_model", refuse)
    monkeypatch.setattr(assets, "load_dataset", refuse)


@pytest.fixture(scope="module")
def vit_and_images(tmp_path_factory):
    """A tiny ViT directory (patch size PATCH) and a save_to_disk image dataset for it."""
    root = tmp_path_factory.mktemp("ok")
    return vit_dir(root / "vit"), image_dataset_dir(root / "images")


@pytest.mark.parametrize("argv, expected", [
    (["bench", "good.onnx", "--batch-sizes=-4"], "argument --batch-sizes: -4 is too small: give comma-separated "
     "whole numbers >= 1"),
    (["bench", "good.onnx", "--batch-sizes", "0"], "argument --batch-sizes: 0 is too small"),
    (["bench", "good.onnx", "--batch-sizes", "1,x"], "argument --batch-sizes: 'x' in '1,x' is not a whole number"),
    (["eval", "m", "--data", "d", "--test-samples", "-1"], "argument --test-samples: -1 is too small: give a whole "
     "number >= 0"),
    (["eval", "m", "--data", "d", "--train-samples", "-3"], "argument --train-samples: -3 is too small"),
    (["eval", "m", "--data", "d", "--probe-seeds", "a,b"], "argument --probe-seeds: 'a' in 'a,b' is not a whole "
     "number: give comma-separated whole numbers, e.g. 0,1,2"),
    (["select-eval", "m", "--data", "d", "--out", "o", "--sample-sizes", "10,x"], "argument --sample-sizes: 'x' in "
     "'10,x' is not a whole number"),
    (["select-eval", "m", "--data", "d", "--out", "o", "--sample-sizes", "0,10"], "argument --sample-sizes: 0 in "
     "'0,10' is too small"),
    (["select-eval", "m", "--data", "d", "--out", "o", "--selection-blocks", "1,-2"], "argument --selection-blocks: "
     "-2 in '1,-2' is too small"),
    (["compress", "m", "--data", "d", "--num-blocks", "1", "--out", "o", "--auto-tolerance=-1"],
     "argument --auto-tolerance: -1 is out of range: give a finite number >= 0"),
    (["compress", "m", "--data", "d", "--num-blocks", "1", "--out", "o", "--auto-tolerance", "nan"],
     "argument --auto-tolerance: nan is out of range"),
    (["demo", "--metric", "bogus"], "argument --metric: invalid choice: 'bogus' (choose from 'linear'"),
    (["bench", "plan", "--torch", "--torch-precisions", "fp32,fp8"], "argument --torch-precisions: 'fp32,fp8': "
     "give a comma-separated list of fp32, bf16-autocast, bf16, fp16"),
    (["bench", "good.onnx", "--providers", "tpu"], "--providers 'tpu' is not available here: onnxruntime here "
     "has cpu"),
])
def test_counts_lists_and_choices_are_refused_before_any_work(tmp_path, monkeypatch, capsys, no_loading, argv,
                                                              expected):
    monkeypatch.chdir(tmp_path)
    line = _main_error(argv, capsys)
    assert expected in line
    if "--providers" in argv:
        assert "leave --providers out to use the best available one" in line and "providers=None" not in line
    assert _listing(tmp_path) == set()


def test_list_and_number_types_accept_what_they_name():
    parser = build_parser()
    assert parser.parse_args(["bench", "a.onnx", "--batch-sizes", "1, 8,32"]).batch_sizes == (1, 8, 32)
    assert parser.parse_args(["bench", "a.onnx"]).batch_sizes == (1, 8, 32)
    args = parser.parse_args(["select-eval", "m", "--data", "d", "--out", "o"])
    assert args.sample_sizes == () and args.selection_blocks == (1, 2, 3, 4)
    assert parser.parse_args(["select-eval", "m", "--data", "d", "--out", "o", "--selection-blocks", ""]
                             ).selection_blocks == ()
    args = parser.parse_args(["eval", "m", "--data", "d", "--probe-seeds", "3,-1", "--test-samples", "0"])
    assert args.probe_seeds == (3, -1) and args.test_samples == 0
    assert parser.parse_args(["compress", "m", "--data", "d", "--num-blocks", "1", "--out", "o",
                              "--auto-tolerance", "0"]).auto_tolerance == 0.0


def test_eval_answers_a_plan_json_that_is_not_json(tmp_path, monkeypatch, capsys, no_loading):
    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "plan.json").write_text("{not json")
    (tmp_path / "P" / "weights.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    line = _main_error(["eval", "no-such-model", "--data", "mnist-5k", "--plan", "P"], capsys)
    assert "P/plan.json is not valid JSON (JSONDecodeError" in line
    assert "the plan is damaged, save it again" in line


def test_a_text_model_on_image_data_is_answered_before_the_model_loads(tmp_path, monkeypatch, capsys,
                                                                       vit_and_images):
    _, images = vit_and_images
    monkeypatch.setattr(assets, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    line = _main_error(["analyze", "minilm-l6", "--data", str(images)], capsys)
    assert "model 'minilm-l6' takes text input but the data set" in line and "holds image rows" in line
    assert "pass a text data set (built-in: rotten-tomatoes) or an image model (built-in: dinov2-small)" in line


@pytest.mark.parametrize("argv, expected", [
    (["demo", "--data", "rotten-tomatoes", "--out", "d"], "model 'dinov2-small' takes image input but the data set "
     "'rotten-tomatoes' holds text rows"),
    (["demo", "--model", "minilm-l6", "--out", "d"], "model 'minilm-l6' takes text input but the data set "
     "'mnist-5k' holds image rows"),
])
def test_demo_modality_is_answered_before_any_work_and_writes_nothing(tmp_path, monkeypatch, capsys, no_loading,
                                                                       argv, expected):
    monkeypatch.chdir(tmp_path)
    assert expected in _main_error(argv, capsys)
    assert _listing(tmp_path) == set()


def test_demo_removes_the_report_directory_it_made_when_a_stage_fails(tmp_path, monkeypatch, capsys):
    def no_such_data(name, *args, **kwargs):
        raise AssetError(f"no data set {name!r}")

    monkeypatch.setattr(assets, "load_dataset", no_such_data)
    monkeypatch.chdir(tmp_path)
    line = _main_error(["demo", "--out", "d"], capsys)
    assert "no data set 'mnist-5k'" in line
    assert _listing(tmp_path) == set()
    # the default report directory too; and the stage line went to stderr, like every command's
    code, out, err = _run_main(["demo"], capsys)
    assert code == 2 and _listing(tmp_path) == set()
    assert "[fxapprox demo] loading dinov2-small and mnist-5k ..." in err and "[fxapprox demo]" not in out
    # a directory that was there (empty) stays
    (tmp_path / "kept").mkdir()
    _main_error(["demo", "--out", "kept"], capsys)
    assert _listing(tmp_path) == {Path("kept")}


def test_run_demo_refuses_a_non_empty_directory_unless_told(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already holds files: choose another report directory, or pass "
                       "overwrite=True"):
        run_demo(DemoConfig(), tmp_path)
    with pytest.raises(MissingScoreError, match="cannot choose spans by metric 'bogus'"):
        run_demo(DemoConfig(metric="bogus"), tmp_path / "new")
    assert _listing(tmp_path) == {Path("notes.txt")}
    monkeypatch.setattr(assets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssetError("stop here")))
    with pytest.raises(AssetError, match="stop here"):  # told: the check lets it through to the work
        run_demo(DemoConfig(), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv, expected", [
    (["compress", "no-such-model", "--data", "mnist-5k", "--num-blocks", "1", "--out", "plan", "--json", "."],
     "--json . is a directory; give a file path, e.g. out.json"),
    (["analyze", "no-such-model", "--data", "mnist-5k", "--heatmap", "afile/h.png"],
     "--heatmap afile/h.png: afile is a file, so no directory can be made under it; choose another --heatmap"),
    (["analyze", "no-such-model", "--data", "mnist-5k", "--markdown", "sub"],
     "--markdown sub is a directory; give a file path, e.g. sub/out.md"),
    (["export", "no-such-model", "--onnx", "afile/x.onnx"], "--onnx afile/x.onnx: afile is a file"),
    (["bench", "a.onnx", "--json", "sub"], "--json sub is a directory"),
    (["eval", "no-such-model", "--data", "mnist-5k", "--json", "afile/deeper/r.json"],
     "--json afile/deeper/r.json: afile is a file"),
    (["select-eval", "no-such-model", "--data", "mnist-5k", "--out", "afile/o"], "--out afile/o: afile is a file"),
    (["frontier", "no-such-model", "--data", "mnist-5k", "--out", "afile"], "afile is a file, not a directory"),
])
def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch, capsys, no_loading, argv, expected):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "sub").mkdir()
    before = _listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert expected in _main_error(argv, capsys)
    assert _listing(tmp_path) == before


def test_analyze_makes_the_heatmap_directory_only_when_it_succeeds(tmp_path, monkeypatch, capsys, vit_and_images,
                                                                    nan_model_and_images):
    vit, images = vit_and_images
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(images), "--samples", "4", "--batch-size", "4", "--output-samples", "0",
              "--image-size", str(IMAGE), "--no-progress"]
    nan_vit, _ = nan_model_and_images
    line = _main_error(["analyze", str(nan_vit), *common, "--heatmap", "failed/h.png", "--json", "failed/a.json"],
                       capsys)
    assert "holds NaN or Inf" in line and _listing(tmp_path) == set()
    code, out, _ = _run_main(["analyze", str(vit), *common, "--heatmap", "nodir/h.png", "--json", "nodir/a.json"],
                             capsys)
    assert code == 0 and "wrote nodir/h.png" in out
    assert (tmp_path / "nodir" / "h.png").stat().st_size > 0 and (tmp_path / "nodir" / "a.json").is_file()


def test_an_image_smaller_than_the_patch_is_one_clear_error_before_capture(tmp_path, monkeypatch, capsys,
                                                                           vit_and_images):
    vit, images = vit_and_images
    monkeypatch.chdir(tmp_path)
    line = _main_error(["analyze", str(vit), "--data", str(images), "--image-size", "5", "--samples", "4"], capsys)
    assert line.endswith(f"--image-size 5: image smaller than the patch size {PATCH} of the model; give "
                         f"--image-size >= {PATCH} (a multiple of {PATCH}, e.g. {4 * PATCH})")
    line = _main_error(["export", str(vit), "--onnx", "x.onnx", "--image-size", "5"], capsys)
    assert f"image smaller than the patch size {PATCH}" in line
    assert _listing(tmp_path) == set()


def test_bench_on_an_empty_onnx_file_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    line = _main_error(["bench", "empty.onnx"], capsys)
    assert "empty.onnx is not an ONNX model (an empty file); pass an .onnx file written by `fxapprox export`" in line
    assert "calibration" not in line


def test_export_of_a_missing_name_mentions_plan_directories(tmp_path):
    line = _error_line(_fxapprox("export", "nosuchplan", "--onnx", "x.onnx", cwd=tmp_path,
                                 env={"HF_HUB_OFFLINE": "1"}), "export")
    assert "nosuchplan is neither a plan directory (no such directory) nor a model" in line
    assert "or pass a plan directory written by `fxapprox compress --out DIR`" in line
    assert _listing(tmp_path) == set()


def test_demo_heatmap_names_its_quantity_blank_cells_and_blocks_removed(tmp_path):
    n = 4
    scores = np.full((n + 1, n + 1), np.nan)
    for s in range(n):
        for e in range(s + 1, min(s + 3, n + 1)):
            scores[s, e] = 0.05 * (e - s)
    an = fxapprox.Analysis(model="m", num_blocks=n, tokens="all", samples=8, rows=80, widths=[4] * (n + 1),
                           ridge=0.0, scores={"output": scores}, output_samples=4, output_target="features")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figures = []
    real_close = plt.close
    plt.close = figures.append  # keep the figure to read it back
    try:
        _plot_heatmap(an, tmp_path / "h.png", "output", [(0, 2)], max_len=2)
    finally:
        plt.close = real_close
    fig = figures[0]
    ax, bar = fig.axes
    assert bar.get_ylabel() == "relative error of the final features (compressed vs original)"
    assert "blank: spans of more than 2 blocks, which the output score does not score" in ax.get_title()
    cells = {t.get_text() for t in ax.texts}
    assert "0.05\n1 block" in cells and "0.1\n2 blocks" in cells
    real_close(fig)
    assert (tmp_path / "h.png").stat().st_size > 0


def test_compress_overwrite_into_a_directory_with_other_files_is_refused_before_work(tmp_path, monkeypatch, capsys,
                                                                                     no_loading):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _main_error(["compress", "m", "--data", "d", "--num-blocks", "1", "--out", str(out), "--overwrite"], capsys)
    assert "holds files other than a plan (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "mine"


def test_a_model_name_with_an_unknown_home_directory_is_a_missing_path():
    with pytest.raises(AssetError, match="'~0': no such file or directory"):
        assets.load_model("~0")

"""The command line's defaults and quiet output (issue 12, items 9 and 11): sound scores by default,
one note, no stray output, help that shows defaults, plan files with one mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import image_dataset_dir, vit_dir
from export_helpers import IMAGE
from tiny_models import tiny_batches, tiny_net

import fxapprox
from fxapprox.cli import build_parser
from fxapprox.study.demo import default_out

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vit_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    return vit_dir(root / "vit"), image_dataset_dir(root / "images", n=12)


def _analyze(vit, images, *extra):
    return subprocess.run([sys.executable, "-m", "fxapprox", "analyze", str(vit), "--data", str(images),
                           "--image-size", str(IMAGE), "--samples", "4", "--no-progress", *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "FXAPPROX_DEBUG": ""})


def test_analyze_defaults_score_every_token_and_print_only_the_table(vit_and_images):
    proc = _analyze(*vit_and_images)
    assert proc.returncode == 0, proc.stderr
    assert "4 samples, tokens=all" in proc.stdout.splitlines()[0]
    assert not any(line.lstrip().startswith("{") for line in proc.stdout.splitlines())  # no JSON without --json
    assert "note:" not in proc.stderr  # 4 samples × 17 tokens = 68 rows > width 32: a sound fit
    assert "Loading weights" not in proc.stderr  # --no-progress also quiets transformers


def test_papers_setting_is_one_flag_away_and_warns_once(vit_and_images):
    proc = _analyze(*vit_and_images, "--tokens", "cls")
    assert proc.returncode == 0, proc.stderr
    assert "tokens=cls" in proc.stdout.splitlines()[0]
    assert proc.stderr.count("least-squares fit interpolates") == 1
    assert "UnderdeterminedScoreWarning" not in proc.stderr


def test_plan_files_share_one_mode(tmp_path):
    res = fxapprox.compress(tiny_net(["mlp"] * 3), tiny_batches(), spans=[(0, 1)], num_samples=8, progress=False)
    res.save(tmp_path / "plan")
    modes = {(tmp_path / "plan" / f).stat().st_mode & 0o777 for f in ("plan.json", "weights.safetensors")}
    assert len(modes) == 1


def _help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


def test_help_shows_defaults_and_explains_transform():
    assert "nothing (identity; needs equal widths), or auto" in _help("compress")
    assert "bootstrap rounds for the P@k intervals (default: 1000)" in _help("select-eval")
    assert "batch size of feature extraction (default: 64)" in _help("select-eval")
    assert "(default: None)" not in _help("bench") and "(default: False)" not in _help("export")


def test_eval_probe_epochs_default_does_not_underfit():
    args = build_parser().parse_args(["eval", "m", "--data", "d"])
    assert args.epochs == 30


def test_demo_writes_under_the_ignored_reports_folder():
    assert default_out().parts[0] == "reports"
    assert "/reports/" in (REPO / ".gitignore").read_text().split()

"""Atomic writes: a failing or killed writer leaves the old file/plan (or none, or a typed error), never a mix.

The kill test forks a process that saves two plans in turn over one directory and SIGKILLs it at 20
seeded random points (`random.Random(0)`); after each kill, `Plan.read` must give plan A, plan B or a
typed error, and the next save must succeed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tiny_models import tiny_batches, tiny_net

import fxapprox
import fxapprox.plan
from fxapprox.atomic import atomic_dir, atomic_path, atomic_write_text, default_mode
from fxapprox.errors import FxApproxError
from fxapprox.plan import Plan


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_write_gets_open_mode_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "{}\n")
    assert path.read_text() == "{}\n" and path.stat().st_mode & 0o777 == default_mode()
    assert _leftovers(tmp_path) == []


def test_failing_write_leaves_the_previous_file_untouched(tmp_path):
    path = atomic_write_text(tmp_path / "report.md", "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".md"
        tmp.write_text("half of the ne")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_failing_directory_fill_leaves_the_previous_directory_untouched(tmp_path):
    d = atomic_dir(tmp_path / "d", lambda tmp: (tmp / "x").write_text("old"))

    def fill(tmp: Path) -> None:
        (tmp / "x").write_text("new")
        raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        atomic_dir(d, fill, overwrite=True)
    assert [p.name for p in d.iterdir()] == ["x"] and (d / "x").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failing_plan_save_keeps_the_old_plan(tmp_path, monkeypatch):
    model = tiny_net(["mlp"] * 3)
    old = fxapprox.compress(model, tiny_batches(), spans=[(0, 1)], num_samples=8, progress=False)
    new = fxapprox.compress(model, tiny_batches(), spans=[(1, 2)], num_samples=8, progress=False)
    old.save(tmp_path / "plan")
    before = {p.name: p.read_bytes() for p in (tmp_path / "plan").iterdir()}

    def interrupted(*args, **kwargs):
        save_file(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C after the weights were written, before plan.json

    monkeypatch.setattr(fxapprox.plan, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "plan", overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "plan").iterdir()} == before
    assert _leftovers(tmp_path) == []
    assert Plan.read(tmp_path / "plan").spans[0].s == 0


def _save_forever(plans: list[Plan], target: Path, ready) -> None:
    """Child process: save the plans in turn over `target`, for ever."""
    ready.set()
    i = 0
    while True:
        plans[i % len(plans)].save(target, overwrite=True)
        i += 1


def _which(target: Path, spans: dict) -> str:
    try:
        plan = Plan.read(target)
    except FxApproxError:
        return "typed error"
    found = [(sp.s, sp.e) for sp in plan.spans]
    assert found in spans.values(), f"a mixed plan loaded: {found}"
    name = next(k for k, v in spans.items() if v == found)
    weights = {k: v.tolist() for k, v in plan.weights.items()}
    assert weights == spans[name + " weights"], "plan.json of one plan with the weights of another"
    return name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_plan_save_killed_at_random_points_never_leaves_a_mixed_plan(tmp_path, capsys):
    model = tiny_net(["mlp"] * 4)
    a = fxapprox.compress(model, tiny_batches(), spans=[(0, 2)], num_samples=8, progress=False).plan
    b = fxapprox.compress(model, tiny_batches(seed=2), spans=[(1, 3)], num_samples=8, progress=False).plan
    spans = {"plan A": [(0, 2)], "plan B": [(1, 3)],
             "plan A weights": {k: v.tolist() for k, v in a.weights.items()},
             "plan B weights": {k: v.tolist() for k, v in b.weights.items()}}
    target = tmp_path / "plan"
    a.save(target)
    rng = random.Random(0)
    ctx = multiprocessing.get_context("fork")
    counts = {"plan A": 0, "plan B": 0, "typed error": 0, "killed mid-write": 0}
    for _ in range(20):
        ready = ctx.Event()
        child = ctx.Process(target=_save_forever, args=([a, b], target, ready), daemon=True)
        child.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0.0, 0.3))  # a save takes about 60 ms here (three fsyncs)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        counts["killed mid-write"] += bool(_leftovers(tmp_path))
        counts[_which(target, spans)] += 1
    b.save(target, overwrite=True)  # the next save clears what the killed writers left
    assert _which(target, spans) == "plan B" and _leftovers(tmp_path) == []
    with capsys.disabled():
        print(f"\nkill test (20 SIGKILLs, seed 0): {counts}")
    assert counts["plan A"] + counts["plan B"] + counts["typed error"] == 20


def test_onnx_export_failing_its_parity_check_leaves_the_previous_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from fxapprox.errors import ExportMismatchError
    from fxapprox.export import to_onnx

    out = atomic_write_text(tmp_path / "model.onnx", "the previous export\n")
    with pytest.raises(ExportMismatchError, match="model.onnx"):
        to_onnx(tiny_net(["mlp"] * 2), tiny_batches(1)[0], out, atol=-1.0, rtol=0.0)  # no tolerance passes
    assert out.read_text() == "the previous export\n" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    record = to_onnx(tiny_net(["mlp"] * 2), tiny_batches(1)[0], out)
    assert record.path == out and out.stat().st_size > 1000 and _leftovers(tmp_path) == []

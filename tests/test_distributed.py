"""Data-parallel calibration and scoring on 2 gloo processes (127.0.0.1) vs one process; collective
errors; half-precision models.

Each multi-process test spawns two workers once (bounded by a timeout, killed past it), lets them
run several scenarios and write what they saw into a temporary directory; the test process
computes the single-process reference and compares.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from tiny_models import hf_family, tiny_net

import fxapprox
from fxapprox import distributed
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import calibrate_eager, iter_batches
from fxapprox.errors import NonFiniteActivationError, RankMismatchError, UnsupportedBatchError
from fxapprox.stats import FoldedMoments

WORLD = 2
KINDS = ["mlp", "mlp", "shift", "mlp"]
SIZES = [5, 3, 7, 2, 6, 4, 5]  # uneven batches; 20 samples cut inside the 5th batch
NUM_SAMPLES = 20


def _batches(nan_batch: int | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = [torch.randn(n, 5, 12, generator=g) for n in SIZES]
    if nan_batch is not None:
        out[nan_batch][0, 0, 0] = float("nan")
    return out


def _moments(model, num_samples: int = NUM_SAMPLES) -> FoldedMoments:
    stack = find_block_stack(model)
    folded = FoldedMoments(list(range(-1, stack.num_blocks)), 2)
    calibrate_eager(model, stack, folded.indices, iter_batches(_batches())[1], num_samples, moments=folded,
                    progress=False)
    return folded


def _tensors(folded: FoldedMoments) -> dict[str, torch.Tensor]:
    out = {}
    for i, part in enumerate(folded.parts):
        for j, t in enumerate(part.totals() if part.sums is not None else []):  # a fold no batch went to
            out[f"{i}.{j}"] = t.cpu()
        out[f"{i}.counts"] = torch.tensor([part.rows, part.samples])
    return out


def _analysis(model) -> fxapprox.Analysis:
    return fxapprox.analyze(model, _batches(), num_samples=NUM_SAMPLES, tokens="all", holdout_folds=2,
                            output_samples=8, progress=False)


def _compression(model) -> fxapprox.CompressionResult:
    return fxapprox.compress(model, _batches(), num_blocks=2, metric="output", num_samples=NUM_SAMPLES,
                             progress=False)


COMPOUNDING = {"sequential": dict(spans=[(-1, 0), (1, 3)], refit="sequential"),
               "iterative": dict(num_blocks=3, selection="iterative")}


def _counted(name: str, model) -> tuple[fxapprox.CompressionResult, dict[str, int]]:
    """`compress` with the `COMPOUNDING[name]` options → result, and the samples this process ran through
    the calibration interpreters and the candidate runners (the work the ranks split)."""
    from fxapprox.calibrate import CalibrationInterpreter
    from fxapprox.sequential import ReplacedRunner

    counts = {"calibration": 0, "candidates": 0}
    calibrate_batch, candidate_batch = CalibrationInterpreter.observe_batch, ReplacedRunner.features

    def calibration(self, inputs):
        counts["calibration"] += inputs.batch_size
        return calibrate_batch(self, inputs)

    def candidates(self, inputs):
        counts["candidates"] += inputs.batch_size
        return candidate_batch(self, inputs)

    CalibrationInterpreter.observe_batch, ReplacedRunner.features = calibration, candidates
    try:
        res = fxapprox.compress(model, _batches(), num_samples=NUM_SAMPLES, progress=False, **COMPOUNDING[name])
    finally:
        CalibrationInterpreter.observe_batch, ReplacedRunner.features = calibrate_batch, candidate_batch
    return res, counts


# --- the spawned workers -------------------------------------------------------------------------

def _join(rank: int, port: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))


def _same_work(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    out = Path(out)
    model = tiny_net(KINDS)
    save_file(_tensors(_moments(model)), str(out / f"moments{rank}.safetensors"))
    save_file(_tensors(_moments(model, 4)), str(out / f"first_batch{rank}.safetensors"))  # rank 1 gets no sample
    an = _analysis(model)
    (out / f"analysis{rank}.json").write_text(an.to_json())
    an.to_json(out / f"written{rank}.json")
    res = _compression(model)
    res.save(out / f"plan{rank}")
    save_file({k: v.contiguous() for k, v in res.plan.weights.items()}, str(out / f"weights{rank}.safetensors"))
    (out / f"spans{rank}.json").write_text(json.dumps(res.spans))
    for name in COMPOUNDING:
        res, counts = _counted(name, model)
        save_file({k: v.contiguous() for k, v in res.plan.weights.items()}, str(out / f"{name}{rank}.safetensors"))
        (out / f"{name}{rank}.json").write_text(json.dumps({"spans": res.spans, "counts": counts}))
    dist.destroy_process_group()
    os._exit(0)  # skip teardown: gloo threads can abort it ("terminate called without an active exception")


def _failures(rank: int, port: int, out: str) -> None:
    """NaN on rank 1's batch; a bad batch (wrong width) on rank 0; a different model on rank 1."""
    _join(rank, port)
    seen = {}
    model = tiny_net(KINDS)
    scenarios = {
        "nan": lambda: fxapprox.analyze(model, _batches(nan_batch=1), num_samples=NUM_SAMPLES, progress=False),
        "bad batch": lambda: fxapprox.analyze(
            model, [b if (i, rank) != (2, 0) else b[..., :7] for i, b in enumerate(_batches())],
            num_samples=NUM_SAMPLES, progress=False),
        "other model": lambda: fxapprox.analyze(tiny_net(KINDS, seed=rank), _batches(), num_samples=NUM_SAMPLES,
                                                progress=False),
    }
    for name, run in scenarios.items():
        start = time.monotonic()
        try:
            run()
            seen[name] = ["no error", "", 0.0]
        except Exception as err:
            seen[name] = [type(err).__name__, str(err), time.monotonic() - start]
    (Path(out) / f"errors{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()
    os._exit(0)  # skip teardown: gloo threads can abort it ("terminate called without an active exception")


def _tiny_frontier() -> tuple[dict, dict[str, int]]:
    """A small frontier of a tiny ViT → its `--json` view, and what this process did: `on_progress` calls,
    feature rows extracted, plans exported and timed."""
    from test_selection_eval import _image_dataset

    import fxapprox.study.evaluate as evaluate
    import fxapprox.study.frontier as frontier
    from fxapprox.study.data import ImagePreprocessor

    model, _, _ = hf_family("vit")
    cfg = frontier.FrontierConfig(methods=("shortgpt", "blockpruner", "fxapprox"), max_blocks=2, samples=24,
                                  paper_samples=8, output_samples=8, train_samples=None, test_samples=None, size=32,
                                  batch_size=8, epochs=2, retrain=False, bench_iters=2, bench_warmup=1,
                                  bench_example=2, check_parity=False, bootstrap=20)
    done = {"progress": 0, "feature rows": 0, "timed": 0}
    extract, speed = evaluate.extract_features, frontier._speed

    def counted_extract(*args, **kwargs):
        feats, labels = extract(*args, **kwargs)
        done["feature rows"] += len(feats)
        return feats, labels

    def counted_speed(*args, **kwargs):
        done["timed"] += 1
        return speed(*args, **kwargs)

    def on_progress(_):
        done["progress"] += 1

    evaluate.extract_features, frontier._speed = counted_extract, counted_speed
    try:
        result = frontier.frontier(model, "tiny-vit", _image_dataset(), cfg, preprocessor=ImagePreprocessor(32),
                                   on_progress=on_progress)
    finally:
        evaluate.extract_features, frontier._speed = extract, speed
    return frontier.json_view(result), done


def _frontier_work(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    view, done = _tiny_frontier()
    (Path(out) / f"frontier{rank}.json").write_text(json.dumps({"view": view, "done": done}))
    dist.destroy_process_group()
    os._exit(0)  # skip teardown: gloo threads can abort it ("terminate called without an active exception")


def _spawn(worker, out: Path, timeout: float = 90.0) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(worker, args=(port, str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} workers did not finish within {timeout} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


# --- tests ---------------------------------------------------------------------------------------

def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    assert torch.equal(finite, torch.isfinite(a))
    scale = b[finite].abs().max().clamp_min(1e-300)
    return float((a[finite] - b[finite]).abs().max() / scale)


@pytest.fixture(scope="module")
def same_work(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _spawn(_same_work, out)
    return out


@pytest.fixture
def one_thread():
    """The workers run on one thread each; so does the reference (float32 matmuls round by blocking)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "num_samples"), [("moments", NUM_SAMPLES), ("first_batch", 4)])
def test_moments_equal_one_process(same_work, one_thread, name, num_samples):
    reference = _tensors(_moments(tiny_net(KINDS), num_samples))
    assert reference["0.counts"][1] + reference["1.counts"][1] == num_samples
    for rank in range(WORLD):
        got = load_file(str(same_work / f"{name}{rank}.safetensors"))
        assert got.keys() == reference.keys()
        for key, ref in reference.items():
            if key.endswith("counts"):
                assert torch.equal(got[key], ref), key
            else:
                assert _relative(got[key], ref) <= 1e-12, key


def test_scores_and_plan_equal_one_process(same_work, one_thread):
    model = tiny_net(KINDS)
    reference = _analysis(model)
    ref_res = _compression(model)
    for rank in range(WORLD):
        an = fxapprox.Analysis.from_json(same_work / f"analysis{rank}.json")
        assert (an.samples, an.rows) == (reference.samples, reference.rows)
        assert set(an.scores) == set(reference.scores) >= {"linear", "heldout", "output"}
        for metric, ref in reference.scores.items():
            assert _relative(torch.from_numpy(an.scores[metric]), torch.from_numpy(ref)) <= 1e-9, metric
        assert json.loads((same_work / f"spans{rank}.json").read_text()) == [list(s) for s in ref_res.spans]
        weights = load_file(str(same_work / f"weights{rank}.safetensors"))
        for key, ref in ref_res.plan.weights.items():
            assert _relative(weights[key], ref) <= 1e-9, key


@pytest.mark.parametrize("name", list(COMPOUNDING))
def test_sequential_refit_and_iterative_selection_split_and_equal_one_process(same_work, one_thread, name):
    """The refit passes split the calibration batches, the greedy steps split the candidate blocks: the
    ranks together run what one process runs (plus the reference features each rank computes once),
    and every rank gets the single-process plan. A refitted span's map is fitted on the model with the
    earlier maps inserted in float32: a float64 difference of 1e-16 in an earlier map (the moments are
    summed in another order) can round one of its float32 weights the other way (6e-8 relative), so
    later maps agree to 1e-5 rather than 1e-9."""
    ref_res, ref_counts = _counted(name, tiny_net(KINDS))
    first = f"span.{ref_res.spans[0][0]}.{ref_res.spans[0][1]}."
    seen = [json.loads((same_work / f"{name}{rank}.json").read_text()) for rank in range(WORLD)]
    for rank in range(WORLD):
        assert seen[rank]["spans"] == [list(s) for s in ref_res.spans]
        weights = load_file(str(same_work / f"{name}{rank}.safetensors"))
        assert weights.keys() == ref_res.plan.weights.keys()
        for key, ref in ref_res.plan.weights.items():
            exact = name == "iterative" or key.startswith(first)
            assert _relative(weights[key], ref) <= (1e-9 if exact else 1e-5), key
    counts = [s["counts"] for s in seen]
    assert sum(c["calibration"] for c in counts) == ref_counts["calibration"]
    assert all(c["calibration"] < ref_counts["calibration"] for c in counts)
    if name == "iterative":
        reference_features = _batches()[0].shape[0]  # every rank scores the unreplaced model once
        assert sum(c["candidates"] - reference_features for c in counts) == \
            ref_counts["candidates"] - reference_features
        assert all(c["candidates"] < ref_counts["candidates"] for c in counts)


@pytest.mark.slow
def test_frontier_splits_features_times_on_rank_zero_and_equals_one_process(tmp_path, one_thread):
    _spawn(_frontier_work, tmp_path, timeout=300.0)
    ref, ref_done = _tiny_frontier()
    seen = [json.loads((tmp_path / f"frontier{rank}.json").read_text()) for rank in range(WORLD)]
    quality = ("flops_removed", "params_removed", "agreement", "accuracy", "cosine")
    speed = ("speedup_b1", "speedup_b32", "flop_speedup")
    for rank, got in enumerate(seen):
        assert got["view"]["budgets"] == ref["budgets"] and got["view"]["methods"].keys() == ref["methods"].keys()
        assert got["view"]["original"]["accuracy"] == ref["original"]["accuracy"]
        for method, rows in ref["methods"].items():
            for row, ref_row in zip(got["view"]["methods"][method], rows, strict=True):
                assert row["spans"] == ref_row["spans"], (rank, method)
                for key in quality:
                    assert row[key] == pytest.approx(ref_row[key], rel=1e-6, abs=1e-9), (rank, method, key)
    for method, rows in seen[0]["view"]["methods"].items():  # timed once, on rank 0: every rank has its figures
        timed = [[r[key] for key in speed] for r in rows]
        assert timed == [[r[key] for key in speed] for r in seen[1]["view"]["methods"][method]]
    done = [got["done"] for got in seen]
    assert done[0]["progress"] == ref_done["progress"] > 0 and done[1]["progress"] == 0
    assert done[0]["timed"] == ref_done["timed"] > 0 and done[1]["timed"] == 0
    assert sum(d["feature rows"] for d in done) == ref_done["feature rows"]
    assert all(0 < d["feature rows"] < ref_done["feature rows"] for d in done)


def test_single_process_commands_refuse_a_process_group(monkeypatch, capsys):
    from fxapprox.cli import main

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert main(["bench", "no-such-model.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fxapprox bench: error: `fxapprox bench` runs in one process, but it was started as 2")
    assert "\n" not in err and "analyze, compress, frontier" in err


def test_rank_zero_alone_writes(same_work):
    assert (same_work / "written0.json").is_file() and (same_work / "plan0").is_dir()
    assert not (same_work / "written1.json").exists() and not (same_work / "plan1").exists()


def test_failure_on_one_rank_stops_every_rank(tmp_path):
    _spawn(_failures, tmp_path)
    seen = [json.loads((tmp_path / f"errors{r}.json").read_text()) for r in range(WORLD)]
    nan = [s["nan"] for s in seen]
    assert [n[0] for n in nan] == [NonFiniteActivationError.__name__] * WORLD
    assert "rank 1 of 2 failed" in nan[0][1]
    bad = [s["bad batch"] for s in seen]
    assert [b[0] for b in bad] == [UnsupportedBatchError.__name__] * WORLD  # batch 2 unlike batch 0: typed
    assert "rank 0 of 2 failed" in bad[1][1] and "calibration batch 2" in bad[0][1]
    other = [s["other model"] for s in seen]
    assert [o[0] for o in other] == [RankMismatchError.__name__] * WORLD
    assert "weights checksum" in other[0][1]
    assert all(s[name][2] < 25 for s in seen for name in s)  # below the group's 30 s timeout: no rank waited it out


def test_without_process_group_nothing_changes():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.share([1, 2, 3]) == [1, 2, 3]
    assert distributed.gather_dict({1: 2}) == {1: 2}


# --- half precision ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_vit_compresses(dtype):
    model, batches, _ = hf_family("vit")
    model = model.to(dtype)
    batches = [{"pixel_values": b["pixel_values"].to(dtype)} for b in batches]
    res = fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=12, progress=False)
    assert res.plan.weights["span.0.2.weight"].dtype == torch.float64  # fitted from float64 moments
    assert {p.dtype for p in res.module.parameters()} == {dtype}  # the new Linear too
    out = res.module(**batches[0]).last_hidden_state
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_bf16_vit_exports_as_float32(tmp_path):
    from fxapprox.errors import ExportError
    from fxapprox.export import to_onnx

    model, batches, _ = hf_family("vit")
    batches = [{"pixel_values": b["pixel_values"].to(torch.bfloat16)} for b in batches]
    res = fxapprox.compress(model.to(torch.bfloat16), batches, spans=[(0, 2)], num_samples=12, progress=False)
    with pytest.raises(ExportError, match="bfloat16"):
        to_onnx(res, batches[0], tmp_path / "bf16.onnx")
    exported = to_onnx(res.module.float(), {"pixel_values": batches[0]["pixel_values"].float()},
                       tmp_path / "fp32.onnx")
    assert Path(exported.path).is_file()


def test_block_dispatched_model_calibrates_through_hooks():
    """An accelerate `device_map` by block (all on the CPU here: spreading blocks over devices needs GPUs)."""
    accelerate = pytest.importorskip("accelerate")
    model, batches, _ = hf_family("vit")
    reference = fxapprox.analyze(model, batches, num_samples=12, tokens="all", progress=False)
    stack = find_block_stack(model)
    device_map = {stack.block_path(i): "cpu" for i in range(stack.num_blocks)}
    device_map.update({name: "cpu" for name, _ in model.named_children() if name != stack.path.split(".")[0]})
    model = accelerate.dispatch_model(model, device_map=device_map)
    assert set(model.hf_device_map) >= {stack.block_path(i) for i in range(stack.num_blocks)}
    an = fxapprox.analyze(model, batches, num_samples=12, tokens="all", progress=False)
    assert an.capture_path == "eager block hooks"
    assert torch.equal(torch.from_numpy(an.scores["linear"]).nan_to_num(),
                       torch.from_numpy(reference.scores["linear"]).nan_to_num())

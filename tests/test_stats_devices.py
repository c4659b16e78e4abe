"""Boundary moments spread over the devices of the blocks: the row-block layout == a direct float64
computation on stored activations, the placement rule (`device_starts`), and (CUDA only, skipped
without it) a ViT and a padded BERT dispatched by block with accelerate.

On the CPU the per-device path runs with `torch.device("cpu", 0)` beside `torch.device("cpu")`: two
different placement keys that both hold CPU tensors, so one machine builds one concatenation per
"device" and updates only the row blocks placed there, as it would on two GPUs.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import hf_family

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import calibrate_eager, iter_batches
from fxapprox.stats import BoundaryMoments, FoldedMoments, device_starts

DIMS = {-1: 6, 0: 4, 1: 6, 2: 6, 3: 3, 4: 4}  # mixed widths, equal-width pairs apart and adjacent
CPU, OTHER = torch.device("cpu"), torch.device("cpu", 0)
LAYOUTS = {
    "one device": [CPU] * 6,
    "two, in order": [CPU, CPU, CPU, OTHER, OTHER, OTHER],
    "two, interleaved": [OTHER, CPU, OTHER, OTHER, CPU, OTHER],
}


def _batches(n: int = 4, seed: int = 0) -> list[dict[int, torch.Tensor]]:
    """Boundary activations of `n` batches of uneven sizes, off-centre (a large mean, as real activations)."""
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(rows, d, generator=g, dtype=torch.float64) * (1 + k % 3) + 5.0 + k for k, d in DIMS.items()}
            for rows in (7, 3, 11, 5)[:n]]


def _stacked(batches: list[dict[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in DIMS}


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


def _filled(layout: list[torch.device], batches: list[dict[int, torch.Tensor]]) -> BoundaryMoments:
    m = BoundaryMoments(list(DIMS))
    m.allocate(DIMS, dict(zip(DIMS, layout)))
    for b in batches:
        m.update(b, samples=2)
    return m


def _assert_direct(m: BoundaryMoments, acts: dict[int, torch.Tensor]) -> None:
    """Every read of `m` against the same quantity computed from the stored activations `acts`."""
    n = next(iter(acts.values())).shape[0]
    assert m.rows == n
    for a in DIMS:
        assert _relative(m.sum(a), acts[a].sum(0)) <= 1e-12
        for b in DIMS:
            assert _relative(m.cross(a, b), acts[a].T @ acts[b]) <= 1e-12, (a, b)
            centred = (acts[a] - acts[a].mean(0)).T @ (acts[b] - acts[b].mean(0))
            assert _relative(m.centred_cross(a, b), centred) <= 1e-12, (a, b)
            if DIMS[a] != DIMS[b]:
                assert math.isnan(m.mean_cosine(a, b)) and math.isnan(m.mean_angle(a, b))
            elif a != b:
                cos = torch.nn.functional.cosine_similarity(acts[a], acts[b], dim=1).clamp(-1, 1)
                assert m.mean_cosine(a, b) == pytest.approx(float(cos.mean()), rel=1e-12)
                assert m.mean_angle(a, b) == pytest.approx(float(torch.arccos(cos).mean() / math.pi), rel=1e-12)
    z = torch.cat([acts[k] for k in DIMS], dim=1)
    assert _relative(m.gram, z.T @ z) <= 1e-12


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_row_blocks_equal_direct_float64(layout):
    batches = _batches()
    m = _filled(LAYOUTS[layout], batches)
    assert m.devices == dict(zip(DIMS, LAYOUTS[layout]))
    _assert_direct(m, _stacked(batches))


@pytest.mark.parametrize("layout", ["two, in order", "two, interleaved"])
def test_spread_layout_equals_one_device(layout):
    """Only the placement differs: the same batches give the same totals to the last bits."""
    batches = _batches()
    spread, single = _filled(LAYOUTS[layout], batches), _filled(LAYOUTS["one device"], batches)
    for got, ref in zip(spread.totals(), single.totals()):
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0.0, equal_nan=True)


def test_folds_of_a_spread_layout_sum_to_the_direct_moments():
    """`FoldedMoments.total()` (`sum_of` / `merge`) and the held-out rest keep the per-boundary placement."""
    batches = _batches()
    folded = FoldedMoments(list(DIMS), 2)
    for part in folded.parts:
        part.allocate(DIMS, dict(zip(DIMS, LAYOUTS["two, interleaved"])))
    for b in batches:
        folded.update(b, samples=2)
    total = folded.total()
    assert total.devices == folded.parts[0].devices
    _assert_direct(total, _stacked(batches))
    _assert_direct(folded.parts[1], _stacked(batches[1::2]))


cuda0, cuda1, cpu = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")


@pytest.mark.parametrize(("devices", "starts"), [
    ([cpu, cpu, cpu], {cpu: 0}),
    ([cuda0, cuda0, cuda1, cuda1], {cuda0: 0, cuda1: 2}),
    ([cpu, cpu, cuda0, cuda0, cuda1], {cpu: 0, cuda0: 2, cuda1: 4}),
    ([cuda1, cuda0, cuda1, cpu, cuda0], {cuda1: 0, cuda0: 1, cpu: 3}),  # not monotone
    ([cuda0, cpu, cuda0, cpu], {cuda0: 0, cpu: 1}),
])
def test_device_starts(devices, starts):
    got = device_starts(devices)
    assert got == starts
    assert next(iter(got)) == devices[0]  # the first boundary's device comes first: it builds the sums


def test_row_blocks_live_on_their_boundary_device():
    """Row blocks on the "meta" device (no GPU needed) beside CPU ones: shapes, places, and CPU values."""
    meta = torch.device("meta")
    layout = [cpu, meta, cpu, meta, meta, cpu]
    batches = _batches()
    m = _filled(layout, batches)
    widths = list(DIMS.values())
    rows, small = m.totals()[:len(DIMS)], m.totals()[len(DIMS):]
    assert [t.device for t in rows] == layout
    assert [tuple(t.shape) for t in rows] == [(w, sum(widths[p:])) for p, w in enumerate(widths)]
    assert {t.device for t in small} == {cpu}  # sums, cosine and angle sums: the first boundary's device
    acts = _stacked(batches)
    for p, (a, device) in enumerate(zip(DIMS, layout)):
        if device == cpu:
            for b in list(DIMS)[p:]:
                assert _relative(m.cross(a, b), acts[a].T @ acts[b]) <= 1e-12, (a, b)
    assert _relative(m.sum(4), acts[4].sum(0)) <= 1e-12


# --- a model dispatched by block (accelerate), GPUs only ---------------------------------------------

def _dispatched(family: str, block_devices: list[str]):
    """Tiny model `family` in float64 (GPU and CPU kernels then agree far below the tolerances), its scores and
    moments, and the model dispatched with block i on `block_devices[i]`, the embeddings with block 0, the
    final norm and pooler with the last."""
    accelerate = pytest.importorskip("accelerate")
    model, batches, _ = hf_family(family)
    model = model.double()
    batches = [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in batches]
    stack = find_block_stack(model)
    reference = fxapprox.analyze(model, batches, num_samples=12, tokens="all", progress=False)
    ref_moments = calibrate_eager(model, stack, list(range(-1, stack.num_blocks)), iter_batches(batches)[1], 12,
                                  progress=False)
    device_map = {stack.block_path(i): d for i, d in enumerate(block_devices)}
    for name, _ in model.named_children():
        if name != stack.path.split(".")[0]:
            device_map[name] = block_devices[0] if name == "embeddings" else block_devices[-1]
    # "cpu" beside a GPU means offloaded (run on the main device) unless the CPU is the main device
    main = "cpu" if "cpu" in block_devices else block_devices[0]
    model = accelerate.dispatch_model(model, device_map=device_map, main_device=main)
    return model, stack, batches, reference, ref_moments


def _check_dispatched(family: str, block_devices: list[str]) -> None:
    model, stack, batches, reference, ref_moments = _dispatched(family, block_devices)
    an = fxapprox.analyze(model, batches, num_samples=12, tokens="all", progress=False)
    assert an.capture_path == "eager block hooks"
    assert set(an.scores) == set(reference.scores)
    for metric, ref in reference.scores.items():
        torch.testing.assert_close(torch.from_numpy(an.scores[metric]), torch.from_numpy(ref), rtol=1e-6, atol=1e-6,
                                   equal_nan=True, msg=metric)
    indices = list(range(-1, stack.num_blocks))
    m = calibrate_eager(model, stack, indices, iter_batches(batches)[1], 12, progress=False)
    expected = [torch.device(block_devices[0])] + [torch.device(d) for d in block_devices]  # H_-1: the embeddings'
    assert [m.devices[k] for k in indices] == expected
    assert [t.device for t in m.totals()[:len(indices)]] == expected
    assert m.sums.device == expected[0] and m.gram.device == expected[0]
    torch.testing.assert_close(m.gram.cpu(), ref_moments.gram, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("family", "block_devices"), [
    ("vit", ["cpu", "cpu", "cuda:0", "cuda:0"]),
    ("vit", ["cuda:0", "cuda:0", "cpu", "cpu"]),
    ("vit", ["cuda:0", "cpu", "cuda:0", "cpu"]),
    ("bert", ["cuda:0", "cuda:0", "cpu", "cpu"]),  # padding mask on the GPU with the inputs, blocks on the CPU
])
def test_dispatched_over_cpu_and_gpu(family, block_devices):
    _check_dispatched(family, block_devices)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("block_devices", [
    ["cuda:0", "cuda:0", "cuda:1", "cuda:1"],
    ["cuda:1", "cuda:0", "cuda:0", "cuda:1"],
])
def test_vit_dispatched_over_two_gpus(block_devices):
    _check_dispatched("vit", block_devices)

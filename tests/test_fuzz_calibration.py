"""Generated calibration loaders → `compress`/`analyze` succeed, or raise a typed one-line `FxApproxError` that
names the calibration batch (or the empty loader) and what was expected.

Hypothesis runs derandomized (`derandomize=True`: the same examples on every run), bounded by `max_examples`,
no deadline. Batches: tensors of generated rank, sizes and dtype, tuples, dicts with generated keys,
`None`, strings, nested lists, zero rows; later batches of another structure.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import IN_FEATURES, TOKENS, WIDTH, Block, TinyNet, tiny_batches, tiny_net

import fxapprox
from fxapprox.errors import CalibrationError, FxApproxError

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = tiny_net(["mlp", "shift", "mlp"])
DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]


@st.composite
def tensors(draw, batch=None):
    rank = draw(st.integers(1, 4))
    sizes = [draw(st.integers(0, 3)) if batch is None else batch]
    sizes += [draw(st.sampled_from([1, TOKENS, 7])) for _ in range(rank - 2)]
    if rank >= 2:
        sizes.append(draw(st.sampled_from([IN_FEATURES - 1, IN_FEATURES, IN_FEATURES + 1])))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    t = torch.randn(sizes, generator=g) * 3
    return t.to(dtype)


def good_tensor(batch: int = 4, tokens: int = TOKENS) -> torch.Tensor:
    return torch.randn(batch, tokens, IN_FEATURES)


BATCHES = st.one_of(
    tensors(),
    st.builds(good_tensor, st.integers(0, 3), st.sampled_from([1, TOKENS, 7])),
    st.tuples(st.builds(good_tensor), st.integers()),
    st.tuples(st.integers(), st.builds(good_tensor)),
    st.dictionaries(st.sampled_from(["x", "foo", "labels", "input_ids"]),
                    st.one_of(st.builds(good_tensor), tensors(), st.none(), st.text(max_size=3),
                              st.lists(st.floats(), max_size=2)), max_size=2),
    st.none(), st.text(max_size=3), st.lists(st.lists(st.floats(-1, 1), max_size=2), max_size=2),
)


def _run(fn: str, loader) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if fn == "compress":
                fxapprox.compress(MODEL, loader, spans=[(0, 1)], num_samples=12, progress=False)
            else:
                fxapprox.analyze(MODEL, loader, num_samples=12, output_samples=0, progress=False)
        except FxApproxError as err:
            text = str(err)
            assert "\n" not in text, text
            assert "calibration batch" in text or "calibration loader" in text or "calibration sample" in text, text
            return "typed"
    return "ok"


@settings(max_examples=45, **SETTINGS)
@given(fn=st.sampled_from(["compress", "analyze"]), first=BATCHES, later=st.lists(BATCHES, max_size=2))
def test_generated_loaders_end_in_success_or_a_typed_error(fn, first, later):
    _run(fn, [first, *later])


@settings(max_examples=25, **SETTINGS)
@given(fn=st.sampled_from(["compress", "analyze"]), later=st.lists(BATCHES, min_size=1, max_size=2))
def test_good_first_batch_then_generated_ones(fn, later):
    _run(fn, [good_tensor(), *later])


@pytest.mark.parametrize("batches, message", [
    ([torch.randn(8, TOKENS, 15)], r"calibration batch 0 \(arg 0: float32 \(8, 5, 15\)\) does not run through "
                                   r"TinyNet: RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ([torch.randint(0, 9, (8, TOKENS, IN_FEATURES))], "batch 0 .*int64.* must have the same dtype"),
    ([{"pixel_values": torch.randn(8, TOKENS, IN_FEATURES)}], r"key\(s\) \['pixel_values'\] that TinyNet.forward "
                                                              "does not take"),
    ([torch.randn(0, TOKENS, IN_FEATURES)], "batch 0 has 0 samples"),
    ([good_tensor(), torch.randn(4, TOKENS, IN_FEATURES + 1)], r"batch 1 is arg 0: float32 \(4, 5, 13\), expected "
                                                               r"arg 0: float32 \(4, 5, 12\) as batch 0"),
    ([good_tensor(), good_tensor().double()], "batch 1 is arg 0: float64"),
    ([good_tensor(), {"x": good_tensor()}], r"batch 1 is x: float32 \(4, 5, 12\), expected arg 0"),
])
@pytest.mark.parametrize("fn", ["compress", "analyze"])
def test_messages_name_the_batch_and_what_was_expected(fn, batches, message):
    with pytest.raises(CalibrationError, match=message):
        if fn == "compress":
            fxapprox.compress(MODEL, batches, spans=[(0, 1)], num_samples=32, progress=False)
        else:
            fxapprox.analyze(MODEL, batches, num_samples=32, output_samples=0, progress=False)


class _Picky(Block):
    """A block that fails (with a long multi-line message) on sequences of 7 tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 7:
            raise RuntimeError("cannot take 7 tokens\n" + "fake tensor log line\n" * 40)
        return super().forward(x)


@pytest.mark.parametrize("fn", ["compress", "analyze"])
def test_error_inside_the_graph_on_a_later_batch_names_it_in_one_line(fn):
    model = TinyNet(["mlp"] * 3).eval()
    model.blocks = torch.nn.ModuleList(_Picky(WIDTH) for _ in range(3))
    batches = [*tiny_batches(2), torch.randn(8, 7, IN_FEATURES)]
    with pytest.raises(CalibrationError) as info:
        if fn == "compress":
            fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=64, progress=False)
        else:
            fxapprox.analyze(model, batches, num_samples=64, output_samples=0, progress=False)
    assert str(info.value) == ("calibration batch 2 (arg 0: float32 (8, 7, 12)) failed inside the model: "
                               "RuntimeError: cannot take 7 tokens")

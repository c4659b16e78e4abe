"""Every typed error, provoked."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IN_FEATURES, TOKENS, Block, tiny_batches, tiny_net
from torch import nn

import fxapprox
from fxapprox.errors import (
    AmbiguousBlockStackError,
    CaptureError,
    EmptyCalibrationError,
    FewerSamplesWarning,
    NoBlockStackError,
    NonFiniteActivationError,
    SpanError,
    UnsupportedBatchError,
)


class DataDependent(nn.Module):
    """Control flow on tensor values: neither symbolic_trace nor torch.export can capture it."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block(IN_FEATURES) for _ in range(3))

    def forward(self, x):
        for b in self.blocks:
            x = b(x) if x.sum() > 0 else -b(x)
        return x


class NoStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, 4)

    def forward(self, x):
        return self.fc(x)


class TwoStacks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.ModuleList(Block(IN_FEATURES) for _ in range(3))
        self.b = nn.ModuleList(Block(IN_FEATURES) for _ in range(3))

    def forward(self, x):
        for blk in [*self.a, *self.b]:
            x = blk(x)
        return x


class Widening(nn.Module):
    """Blocks of one class that change the width: 12 → 12 → 20 → 20."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(12, 12), nn.Linear(12, 20), nn.Linear(20, 20)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _compress(model, batches=None, **kw):
    kw.setdefault("num_samples", 8)
    return fxapprox.compress(model, tiny_batches() if batches is None else batches, progress=False, **kw)


def test_not_capturable():
    with pytest.raises(CaptureError, match="could not capture DataDependent"):
        _compress(DataDependent().eval(), spans=[(0, 1)])


def test_no_block_stack():
    with pytest.raises(NoBlockStackError, match="blocks="):
        _compress(NoStack(), spans=[(0, 1)])


def test_blocks_path_that_does_not_exist():
    with pytest.raises(NoBlockStackError, match="names no submodule"):
        _compress(tiny_net(["mlp"] * 3), spans=[(0, 1)], blocks="encoder.layer")


def test_ambiguous_block_stack_and_its_override():
    with pytest.raises(AmbiguousBlockStackError, match="'a', 'b'"):
        _compress(TwoStacks().eval(), spans=[(0, 1)])
    res = _compress(TwoStacks().eval(), spans=[(0, 1)], blocks="b")
    assert res.plan.blocks == "b"


@pytest.mark.parametrize("spans", [[(0, 3)], [(-2, 1)], [(1, 1)], [(2, 0)]])
def test_span_out_of_range(spans):
    with pytest.raises(SpanError, match="out of range"):
        _compress(tiny_net(["mlp"] * 3), spans=spans)


def test_overlapping_spans():
    with pytest.raises(SpanError, match="overlap"):
        _compress(tiny_net(["mlp"] * 5), spans=[(0, 2), (1, 3)])


def test_identity_span_between_different_widths():
    with pytest.raises(SpanError, match="width 12 to width 20"):
        _compress(Widening(), spans=[(0, 1)], transform="identity")
    assert _compress(Widening(), spans=[(0, 1)], transform="linear").plan.spans[0].out_features == 20


@pytest.mark.parametrize("k", [0, 4])
def test_num_blocks_out_of_range(k):
    with pytest.raises(SpanError, match="num_blocks"):
        _compress(tiny_net(["mlp"] * 3), num_blocks=k)


def test_spans_and_num_blocks_together():
    with pytest.raises(SpanError, match="exactly one"):
        _compress(tiny_net(["mlp"] * 3), spans=[(0, 1)], num_blocks=1)


def test_empty_loader():
    with pytest.raises(EmptyCalibrationError, match="no batch"):
        _compress(tiny_net(["mlp"] * 3), batches=[], spans=[(0, 1)])


def test_fewer_samples_than_asked_warns_and_continues():
    with pytest.warns(FewerSamplesWarning, match="gave 16 samples"):
        res = _compress(tiny_net(["mlp"] * 3), batches=tiny_batches(2, 8), spans=[(0, 1)], num_samples=100)
    assert res.plan.num_samples == 16


def test_nan_activations():
    batches = tiny_batches(2, 4)
    batches[1][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="NaN or Inf"):
        _compress(tiny_net(["mlp"] * 3), batches=batches, spans=[(0, 1)])


@pytest.mark.parametrize("batch", ["a string", 3.0, [], {"x": "text"},
                                   {"x": torch.randn(2, 5, 12), "y": torch.randn(3, 5)}])
def test_unsupported_batch(batch):
    ok = torch.randn(2, TOKENS, IN_FEATURES)
    with pytest.raises(UnsupportedBatchError):
        _compress(tiny_net(["mlp"] * 3), batches=[ok, batch], spans=[(0, 1)], num_samples=100)


def test_tuple_batch_with_labels_is_accepted():
    batches = [(x, torch.zeros(len(x))) for x in tiny_batches()]
    assert _compress(tiny_net(["mlp"] * 3), batches=batches, spans=[(0, 1)]).spans == [(0, 1)]

"""FLOPs (FlopCounterMode) and parameter counts per block, before and after compression."""

from __future__ import annotations

import pytest
import torch
from export_helpers import HIDDEN, compress, image_batches, tiny_vit
from torch.utils.flop_counter import FlopCounterMode

from fxapprox.export import compare_flops, count_flops

TOKENS = (32 // 8) ** 2 + 1  # patches + [CLS]


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def compressed(vit):
    return compress(vit, image_batches(), [(0, 2)], "linear")


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32)


def test_total_matches_flop_counter_and_blocks_are_equal(vit, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vit(x)
    fc = count_flops(vit, x)
    assert fc.blocks == "layers" and list(fc.per_block) == ["0", "1", "2", "3"]
    assert len(set(fc.per_block.values())) == 1
    assert fc.total == sum(fc.per_block.values()) + fc.other
    # attention on the CPU kernel is counted too (FlopCounterMode alone misses it)
    assert fc.total > counter.get_total_flops()
    attention = 4 * 2 * TOKENS * TOKENS * HIDDEN  # QKᵀ and AV per block at batch 2
    assert fc.total - counter.get_total_flops() == 4 * attention
    assert fc.per_item == fc.total / 2


def test_exported_graph_gives_the_same_split_as_eager(vit, x):
    gm = torch.export.export(vit, (x,), strict=False).module()
    eager, graph = count_flops(vit, x), count_flops(gm, x, blocks="layers")
    assert graph.per_block == eager.per_block and graph.total == eager.total
    assert graph.params == eager.params and graph.params_per_block == eager.params_per_block


def test_compressed_drops_removed_blocks_and_adds_the_linear(vit, compressed, x):
    before, after = count_flops(vit, x), count_flops(compressed, x)
    assert list(after.per_block) == ["0", "fxapprox_blocks_1_to_2", "3"]
    assert after.per_block["fxapprox_blocks_1_to_2"] == 2 * 2 * TOKENS * HIDDEN * HIDDEN
    assert after.per_block["0"] == before.per_block["0"] and after.other == before.other
    assert before.total - after.total == before.per_block["1"] + before.per_block["2"] - after.per_block[
        "fxapprox_blocks_1_to_2"]
    assert after.params_per_block["fxapprox_blocks_1_to_2"] == HIDDEN * HIDDEN + HIDDEN
    assert "1" not in after.params_per_block and "2" not in after.params_per_block
    assert after.params == compressed.num_params_after
    assert before.params == compressed.num_params_before


def test_compare_flops_ratios(vit, compressed, x):
    report = compare_flops(vit, compressed, x)
    assert report["flop_ratio"] == pytest.approx(report["before"]["total"] / report["after"]["total"])
    assert report["flop_ratio"] > 1.5 and report["param_ratio"] > 1.5
    assert report["params_removed"] == compressed.num_params_before - compressed.num_params_after


def test_model_without_block_stack_counts_everything_as_other():
    lin = torch.nn.Linear(8, 4)
    fc = count_flops(lin, torch.randn(3, 8))
    assert fc.total == 2 * 3 * 8 * 4 and fc.other == fc.total and fc.per_block == {} and fc.blocks is None

"""SuffixRunner: running from a boundary with a replaced value equals the rewritten graph and, on every
family, the node-by-node interpreter it replaced."""

from __future__ import annotations

import pytest
import torch
from tiny_models import HF_FAMILIES, IMAGE, hf_family, timm_vit, tiny_batches, tiny_net, torchvision_vit

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.boundaries import block_of_node, find_boundaries
from fxapprox.capture import capture, flat_graph_inputs
from fxapprox.inputs import as_model_inputs
from fxapprox.suffix import SuffixRunner


def _setup(family):
    if family == "tiny":
        model, batches = tiny_net(["mlp"] * 4), tiny_batches()
        other = torch.randn(3, 5, 12)
    else:
        model, batches, other = hf_family(family)
    stack = find_block_stack(model)
    cap = capture(model, as_model_inputs(batches[0]), stack)
    return model, batches, as_model_inputs(other), SuffixRunner(cap.module, find_boundaries(cap.module, stack))


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("family", ["tiny", "vit", "bert"])
def test_suffix_with_identity_equals_identity_rewrite(family):
    model, batches, inputs, runner = _setup(family)
    cache = runner.prefix(inputs)
    assert torch.equal(_first(cache.output), _first(inputs.call(model)))
    res = fxapprox.compress(model, batches, spans=[(0, 2)], transform="identity", num_samples=4, progress=False)
    assert torch.equal(_first(runner.run_from(2, cache.boundaries[0], cache)), _first(inputs.call(res.module)))


def test_suffix_from_unchanged_boundary_reproduces_output():
    _, _, inputs, runner = _setup("vit")
    cache = runner.prefix(inputs)
    out = runner.run_from(1, cache.boundaries[1], cache)
    assert type(out) is type(cache.output)
    assert torch.equal(out.last_hidden_state, cache.output.last_hidden_state)


class _ReferenceRunner:
    """The node-by-node runner the generated suffixes replaced: `torch.fx.Interpreter` over the whole
    graph for the prefix, and over the nodes after `H_e` (earlier values from the cache) per suffix."""

    def __init__(self, gm, boundaries):
        self.gm, self.boundaries = gm, boundaries
        self.nodes = list(gm.graph.nodes)

    def prefix(self, inputs):
        env = {}

        class Keeper(torch.fx.Interpreter):
            def run_node(self, n):
                env[n] = super().run_node(n)
                return env[n]

        with torch.no_grad():
            output = Keeper(self.gm).run(*flat_graph_inputs(self.gm, inputs))
        return env, output

    def run_from(self, e, h, env):
        """The output and every value the suffix computed, by node."""
        cut = self.nodes.index(self.boundaries[e])
        initial = {n: env[n] for n in self.nodes[:cut + 1]}
        initial[self.boundaries[e]] = h
        interp = torch.fx.Interpreter(self.gm, garbage_collect_values=False)
        with torch.no_grad():
            flat = interp.run(initial_env=initial, enable_io_processing=False)
        return self.gm.graph._codegen.process_outputs(flat), interp.env


def _family(name):
    if name == "tiny":
        return tiny_net(["mlp"] * 4), tiny_batches(), torch.randn(3, 5, 12)
    if name == "torchvision-vit":
        pytest.importorskip("torchvision")
        return torchvision_vit(), [torch.randn(4, 3, IMAGE, IMAGE)], torch.randn(3, 3, IMAGE, IMAGE)
    if name == "timm-vit":
        pytest.importorskip("timm")
        return timm_vit(), [torch.randn(4, 3, IMAGE, IMAGE)], torch.randn(3, 3, IMAGE, IMAGE)
    return hf_family(name)


def _assert_same_output(got, want):
    flat_got, spec_got = torch.utils._pytree.tree_flatten(got)
    flat_want, spec_want = torch.utils._pytree.tree_flatten(want)
    assert spec_got == spec_want
    for a, b in zip(flat_got, flat_want):
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["tiny", *HF_FAMILIES, "torchvision-vit", "timm-vit"])
def test_generated_suffixes_equal_the_interpreter(family):
    model, batches, other = _family(family)
    stack = find_block_stack(model)
    cap = capture(model, as_model_inputs(batches[0]), stack)
    boundaries = find_boundaries(cap.module, stack)
    runner, reference = SuffixRunner(cap.module, boundaries), _ReferenceRunner(cap.module, boundaries)
    inputs = as_model_inputs(other)  # a batch (and for text, a length) other than the captured one
    cache, (env, want) = runner.prefix(inputs), reference.prefix(inputs)
    _assert_same_output(cache.output, want)
    g = torch.Generator().manual_seed(0)
    for e in range(-1, stack.num_blocks):
        assert torch.equal(cache.boundaries[e], env[boundaries[e]])
        h = cache.boundaries[e] + 0.1 * torch.randn(cache.boundaries[e].shape, generator=g)
        want, values = reference.run_from(e, h, env)
        _assert_same_output(runner.run_from(e, h, cache), want)
        if e < stack.num_blocks - 1:  # the last block's output instead of the model's
            last = boundaries[stack.num_blocks - 1]
            torch.testing.assert_close(runner.run_from(e, h, cache, until=stack.num_blocks - 1), values[last],
                                       atol=1e-6, rtol=1e-6)
        assert runner.suffix(e) is runner.suffix(e)  # built once per boundary
        assert all(_block(n, stack) is None or _block(n, stack) > e
                   for n in runner.suffix(e).graph.nodes)  # blocks up to e are not in the suffix


def _block(node, stack):
    paths = [stack.block_path(i) for i in range(stack.num_blocks)]
    if node.op == "call_module" and node.target in paths:
        return paths.index(node.target)
    return block_of_node(node, stack)

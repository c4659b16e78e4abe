"""Half-block units: middle boundaries `M_k` on every family (equal to eager hooks), spans of
attention or MLP branches, the typed error on parallel blocks, `transform="auto"`, plans."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_models import HF_FAMILIES, IMAGE, half_net, hf_family, timm_vit, tiny_batches, torchvision_vit

import fxapprox
from fxapprox.blocks import find_block_stack
from fxapprox.calibrate import CalibrationInterpreter
from fxapprox.errors import NoMiddleBoundaryError, SpanError
from fxapprox.inputs import as_model_inputs
from fxapprox.prepare import trace

# Where each family's middle M_k is seen eagerly: (submodule of the block, "input" or "output").
_MIDDLE_HOOKS = {
    "vit": ("layernorm_after", "input"), "deit": ("layernorm_after", "input"), "dinov2": ("norm2", "input"),
    "clip-vision": ("layer_norm2", "input"), "bert": ("attention.output.LayerNorm", "output"),
    "modernbert": ("mlp_norm", "input"), "mpnet": ("attention.LayerNorm", "output"),
    "llama": ("post_attention_layernorm", "input"),
    "torchvision": ("ln_2", "input"), "timm": ("norm2", "input"), "handwritten": ("norm2", "input"),
}


def _family(name):
    if name == "torchvision":
        return torchvision_vit(), torch.randn(3, 3, IMAGE, IMAGE)
    if name == "timm":
        return timm_vit(), torch.randn(3, 3, IMAGE, IMAGE)
    if name == "handwritten":
        return half_net(), tiny_batches(1, batch=3)[0]
    model, batches, _ = hf_family(name)
    return model, batches[0]


def _skip_missing(name):
    module = {"torchvision": "torchvision", "timm": "timm"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")


def _graph_boundaries(traced, inputs):
    seen = {}
    watched = {node: k for k, node in enumerate(traced.boundaries.nodes, -1)}
    CalibrationInterpreter(traced.module, watched, seen.__setitem__).observe_batch(inputs)
    return seen


def _eager_middles(model, stack, inputs, sub, where):
    seen = {}
    handles = []
    for k in range(stack.num_blocks):
        module = model.get_submodule(f"{stack.block_path(k)}.{sub}")
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, k=k: seen.__setitem__(k, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(k, o)))
    with torch.no_grad():
        inputs.call(model)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("family", [*HF_FAMILIES, "torchvision", "timm", "handwritten"])
def test_middle_boundaries_equal_eager_hooks(family):
    _skip_missing(family)
    model, batch = _family(family)
    inputs = as_model_inputs(batch)
    stack = find_block_stack(model)
    traced = trace(model, inputs, stack, "half")
    assert traced.num_units == 2 * stack.num_blocks and len(traced.widths) == traced.num_units + 1
    graph = _graph_boundaries(traced, inputs)
    eager = _eager_middles(model, stack, inputs, *_MIDDLE_HOOKS[family])
    block = _graph_boundaries(trace(model, inputs, stack), inputs)
    for k in range(stack.num_blocks):
        torch.testing.assert_close(graph[2 * k], eager[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(graph[2 * k + 1], block[k], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(graph[-1], block[-1])


def test_parallel_block_has_no_middle_but_whole_blocks_work():
    model = half_net(layout="parallel")
    batches = tiny_batches()
    with pytest.raises(NoMiddleBoundaryError, match=r"block blocks\.0 has no middle boundary.*parallel"):
        fxapprox.compress(model, batches, spans=[(0, 1)], units="half", progress=False)
    res = fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=32, progress=False)
    assert res.spans == [(0, 2)]


def test_affine_attention_branches_found_and_replaced_exactly():
    model = half_net(num_blocks=3, affine=True)
    batches = tiny_batches(n_batches=6, batch=16)
    an = fxapprox.analyze(model, batches, units="half", tokens="all", num_samples=96, ridge=1e-9,
                          product_dtype=torch.float64, progress=False)
    assert an.units == "half" and an.num_blocks == 6
    for k in range(3):
        assert an.score(2 * k - 1, 2 * k) < 1e-5  # attention branch: exactly affine
        assert an.score(2 * k, 2 * k + 1) > 1e-2  # MLP branch: not
    res = fxapprox.compress(model, batches, num_blocks=3, units="half", num_samples=96, ridge=1e-9, progress=False)
    assert res.spans == [(-1, 0), (1, 2), (3, 4)]
    x = tiny_batches(1, batch=5, seed=7)[0]
    with torch.no_grad():
        torch.testing.assert_close(res.module(x), model(x), rtol=1e-5, atol=1e-5)
    keys = set(res.module.state_dict())
    for k in range(3):
        assert not any(key.startswith(f"blocks.{k}.proj.") for key in keys)  # attention gone
        assert any(key.startswith(f"blocks.{k}.fc1.") for key in keys)  # MLP kept
    assert len(res.record.added_modules) == 3
    by_output = fxapprox.compress(model, batches, num_blocks=3, units="half", metric="output", num_samples=96,
                                  ridge=1e-9, progress=False)
    assert by_output.spans == [(-1, 0), (1, 2), (3, 4)]


def test_half_spans_cross_block_edges_and_reload(tmp_path):
    model = half_net(num_blocks=3)
    batches = tiny_batches(n_batches=4, batch=16)
    res = fxapprox.compress(model, batches, spans=[(0, 3), (4, 5)], units="half", num_samples=64, progress=False)
    keys = set(res.module.state_dict())
    assert not any(k.startswith(("blocks.0.fc", "blocks.1.")) for k in keys)  # MLP 0 and block 1
    assert any(k.startswith("blocks.2.qkv.") for k in keys) and not any(k.startswith("blocks.2.fc") for k in keys)
    res.save(tmp_path / "plan")
    again = fxapprox.load(model, tmp_path / "plan")
    assert again.plan.units == "half" and again.spans == res.spans
    x = tiny_batches(1, batch=3, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(again.module(x), res.module(x))


def test_half_span_out_of_range_names_units():
    with pytest.raises(SpanError, match="half-block units"):
        fxapprox.compress(half_net(num_blocks=2), tiny_batches(), spans=[(2, 4)], units="half", progress=False)


def test_auto_transform_picks_identity_within_tolerance():
    model = half_net(num_blocks=2)
    with torch.no_grad():  # block 0's MLP adds nothing: dropping it costs nothing
        model.blocks[0].fc2.weight.zero_()
        model.blocks[0].fc2.bias.zero_()
    batches = tiny_batches(n_batches=4, batch=16)
    res = fxapprox.compress(model, batches, spans=[(0, 1), (1, 3)], units="half", transform="auto",
                            num_samples=64, progress=False)
    assert [sp.transform for sp in res.plan.spans] == ["identity", "linear"]
    assert res.record.added_modules == ["fxapprox_blocks_2_to_3"]
    strict = fxapprox.compress(model, batches, spans=[(0, 1), (1, 3)], units="half", transform="auto",
                               auto_tolerance=-1.0, num_samples=64, progress=False)
    assert [sp.transform for sp in strict.plan.spans] == ["linear", "linear"]


def test_unit_params_and_flops_split_each_block():
    model = half_net(num_blocks=2)
    batches = tiny_batches(n_batches=2, batch=8)
    half = fxapprox.analyze(model, batches, units="half", tokens="all", num_samples=16, flops=True, progress=False)
    whole = fxapprox.analyze(model, batches, tokens="all", num_samples=16, flops=True, progress=False)
    d, t = 32, 5
    block = model.blocks[0]
    attn = sum(p.numel() for m in (block.norm1, block.qkv, block.proj) for p in m.parameters())
    mlp = sum(p.numel() for m in (block.norm2, block.fc1, block.fc2) for p in m.parameters())
    assert half.block_params == [attn, mlp, attn, mlp]
    attn_flops = 2 * t * d * 3 * d + 2 * (2 * t * t * d) + 2 * t * d * d  # qkv, q kᵀ, weights v, proj
    mlp_flops = 2 * t * d * 2 * d * 2  # fc1, fc2
    assert half.block_flops == [attn_flops, mlp_flops] * 2
    assert [a + m for a, m in zip(half.block_flops[::2], half.block_flops[1::2])] == whole.block_flops
    assert half.total_flops == whole.total_flops
    assert half.tokens_per_sample == [t] * 5
    params, flops = half.savings(-1, 0)  # block 0's attention, net of its Linear
    assert params == attn - (d * d + d) and flops == attn_flops - 2 * t * d * d
    chosen = half.select(flops_budget=mlp_flops / half.total_flops, metric="linear")
    assert sum(half.savings(s, e)[1] for s, e in chosen) >= mlp_flops


def test_version_1_plan_still_loads(tmp_path):
    import json

    from fxapprox.plan import PLAN_FORMAT

    model = half_net(num_blocks=3)
    batches = tiny_batches(n_batches=2, batch=16)
    res = fxapprox.compress(model, batches, spans=[(0, 2)], num_samples=32, progress=False)
    res.save(tmp_path / "plan")
    meta_path = tmp_path / "plan" / "plan.json"
    meta = json.loads(meta_path.read_text())
    assert meta.pop("format") == PLAN_FORMAT and meta.pop("units") == "block"
    meta_path.write_text(json.dumps({**meta, "format": "fxapprox-plan/1"}))  # as version 1 wrote it
    old = fxapprox.load(model, tmp_path / "plan")
    assert old.plan.units == "block" and old.spans == [(0, 2)]
    x = tiny_batches(1, batch=3, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(old.module(x), res.module(x))


def test_half_analysis_output_score_json_and_heatmap(tmp_path):
    model = half_net(num_blocks=2, affine=True)
    batches = tiny_batches(n_batches=6, batch=16)
    an = fxapprox.analyze(model, batches, units="half", tokens="all", num_samples=64, output_samples=32,
                          ridge=1e-9, product_dtype=torch.float64, progress=False)
    assert an.score(-1, 0, "output") < 1e-4 and an.score(0, 1, "output") > 1e-2
    again = fxapprox.Analysis.from_json(an.to_json())
    assert again.units == "half" and again.score(1, 2, "output") == an.score(1, 2, "output")
    assert an.plot(tmp_path / "half.png", metric="linear").stat().st_size > 0


def test_half_unit_plan_exports_to_onnx_with_parity(tmp_path):
    import json

    from export_helpers import image_batches, tiny_vit

    from fxapprox.export import read_metadata, to_onnx

    vit = tiny_vit()
    res = fxapprox.compress(vit, image_batches(), spans=[(-1, 0), (2, 4)], units="half", num_samples=64,
                            progress=False)
    example = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5))
    record = to_onnx(res, example, tmp_path / "half.onnx", check_batch_sizes=(1, 5))
    assert [c.batch_size for c in record.checks] == [3, 1, 5] and all(c.ok for c in record.checks)
    meta = read_metadata(tmp_path / "half.onnx")
    assert meta["fxapprox.spans"] == "-1->0:linear,2->4:linear"
    assert json.loads(meta["fxapprox.plan"])["units"] == "half"


def test_cli_compress_and_analyze_take_units(tmp_path, monkeypatch, capsys):
    import json

    import fxapprox.cli as cli
    from fxapprox.cli import analyze as analyze_cli
    from fxapprox.cli import compress as compress_cli

    model, batches = half_net(num_blocks=2), tiny_batches(n_batches=4, batch=16)
    monkeypatch.setattr(compress_cli, "load_model_and_calibration", lambda args: (model, None, batches))
    def load_for_analyze(args, extra_samples=0, *, at_most_extra=False):
        args.extra_samples = extra_samples
        return model, None, batches

    monkeypatch.setattr(analyze_cli, "load_model_and_calibration", load_for_analyze)
    monkeypatch.setattr(cli, "_SUBCOMMANDS", ["compress", "analyze"])
    assert cli.main(["compress", "tiny", "--data", "x", "--spans", "m1-0,2-3", "--units", "half", "--samples", "64",
                     "--transform", "auto", "--out", str(tmp_path / "plan"), "--json", str(tmp_path / "c.json"),
                     "--no-progress"]) == 0
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["units"] == "half" and [(s["s"], s["e"]) for s in summary["spans"]] == [(-1, 0), (2, 3)]
    assert fxapprox.load(model, tmp_path / "plan").plan.units == "half"
    assert cli.main(["analyze", "tiny", "--data", "x", "--units", "half", "--tokens", "all", "--samples", "64",
                     "--output-samples", "0", "--json", str(tmp_path / "a.json"), "--no-progress"]) == 0
    assert "4 half-block units" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["units"] == "half"


def test_half_unit_span_features_equal_the_compressed_modules():
    from fxapprox.study.span_features import span_features

    model, batches, _ = hf_family("dinov2")
    x = torch.randn(5, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    spans = [(-1, 0), (2, 3), (1, 4)]
    feats = span_features(model, batches, spans, {"test": [{"pixel_values": x}]}, num_samples=12, units="half",
                          progress=False)
    for span in spans:
        res = fxapprox.compress(model, batches, spans=[span], num_samples=12, units="half", progress=False)
        with torch.no_grad():
            want = res.module(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(feats.replaced[span]["test"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, attention", [
    ("dinov2", ("norm1", "attention", "layer_scale1")), ("bert", ("attention",)),
])
def test_export_graph_unit_params_split_each_block(family, attention):
    model, batches, _ = hf_family(family)
    an = fxapprox.analyze(model, batches, units="half", tokens="all", num_samples=12, progress=False)
    stack = find_block_stack(model)
    for k in range(stack.num_blocks):
        block = model.get_submodule(stack.block_path(k))
        attn = sum(p.numel() for name in attention for p in block.get_submodule(name).parameters())
        assert an.block_params[2 * k] == attn
        assert an.block_params[2 * k] + an.block_params[2 * k + 1] == sum(p.numel() for p in block.parameters())

"""fxapprox.analyze / Analysis: scores from a real calibration pass == direct scores on hooked
activations (every tokens mode), Algorithm 1 == brute force, rendering (JSON, markdown, PNG), CLI,
the `output` score == the error of the compressed model on held-out samples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from test_metrics import defined, direct
from tiny_models import hf_family, tiny_batches, tiny_net

import fxapprox
from fxapprox.analysis import Analysis, UnderdeterminedScoreWarning
from fxapprox.blocks import find_block_stack
from fxapprox.errors import SpanError
from fxapprox.metrics import METRICS, cost

# --- a real pass vs stored activations ---------------------------------------------------------


def _first(value):
    return value if isinstance(value, torch.Tensor) else value[0]


def hooked_rows(model, batches, tokens):
    """Boundary rows H_-1..H_{L-1} captured with eager forward hooks, reduced per `tokens`."""
    stack = find_block_stack(model)
    blocks = [model.get_submodule(stack.block_path(i)) for i in range(stack.num_blocks)]
    rows = {k: [] for k in range(-1, len(blocks))}
    current = {}
    hooks = [blocks[0].register_forward_pre_hook(
        lambda m, a, kw: current.__setitem__(-1, a[0] if a else kw["hidden_states"]), with_kwargs=True)]
    for i, b in enumerate(blocks):
        hooks.append(b.register_forward_hook(lambda m, a, out, i=i: current.__setitem__(i, _first(out))))
    with torch.no_grad():
        for batch in batches:
            current.clear()
            model(**batch) if isinstance(batch, dict) else model(batch)
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            for k, h in current.items():
                h = h.double()
                m = torch.ones(h.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
                if tokens == "cls":
                    r = h[:, 0]
                elif tokens == "mean":
                    r = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)
                else:
                    r = h[m]
                rows[k].append(r)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in rows.items()}


def _batches(name, n_batches=5, batch=8):
    g = torch.Generator().manual_seed(7)
    if name == "vit":
        return [{"pixel_values": torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)}
                for _ in range(n_batches)]
    out = []
    for _ in range(n_batches):
        mask = torch.ones(batch, 9, dtype=torch.long)
        mask[1, 4:] = 0
        mask[5, 6:] = 0
        out.append({"input_ids": torch.randint(5, 100, (batch, 9), generator=g), "attention_mask": mask})
    return out


@pytest.fixture(scope="module", params=["vit", "bert"])
def captured_family(request):
    """(model, batches, captured graph, boundaries): one capture per family for every tokens mode."""
    from fxapprox.boundaries import find_boundaries
    from fxapprox.capture import capture
    from fxapprox.inputs import as_model_inputs

    model, _, _ = hf_family(request.param)
    model = model.double()  # float64 activations: the comparison measures the statistics, not float32 rounding
    batches = _batches(request.param)
    stack = find_block_stack(model)
    captured = capture(model, as_model_inputs(batches[0]).take(2), stack)
    return model, batches, captured.module, find_boundaries(captured.module, stack)


def assert_scores_match_direct(scores, ridge, acts, num_blocks):
    dims = {k: a.shape[1] for k, a in acts.items()}
    for metric in METRICS:
        for s in range(-1, num_blocks - 1):
            for e in range(s + 1, num_blocks):
                got = scores[metric][s + 1, e + 1]
                if not defined(metric, s, e, dims):
                    assert math.isnan(got)
                    continue
                want = direct(metric, acts[s], acts[e], ridge=ridge)
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (metric, s, e)


@pytest.mark.parametrize("tokens", ["cls", "mean", "all"])
def test_streaming_scores_equal_direct_scores_on_a_real_pass(captured_family, tokens):
    """The statistics analyze() builds (calibrate + score_matrix), on HF ViT and on padded BERT."""
    from fxapprox.calibrate import calibrate
    from fxapprox.inputs import as_model_inputs
    from fxapprox.metrics import score_matrix

    model, batches, gm, boundaries = captured_family
    num_blocks = boundaries.num_blocks
    moments = calibrate(gm, boundaries, list(range(-1, num_blocks)), [as_model_inputs(b) for b in batches],
                        40, tokens=tokens, progress=False)
    acts = hooked_rows(model, batches, tokens)
    assert moments.rows == acts[0].shape[0]
    scores = {m: score_matrix(moments, m, ridge=1e-6) for m in METRICS}
    assert_scores_match_direct(scores, 1e-6, acts, num_blocks)


def test_analyze_end_to_end_equals_direct_scores():
    model, _, _ = hf_family("vit")
    model = model.double()
    batches = _batches("vit")
    an = fxapprox.analyze(model, batches, num_samples=40, tokens="all", flops=False, progress=False)
    acts = hooked_rows(model, batches, "all")
    assert an.rows == acts[0].shape[0] == 40 * 17 and an.capture_path == "eager block hooks"
    assert_scores_match_direct(an.scores, an.ridge, acts, an.num_blocks)
    assert an.score(1, 3, "cka") == an.scores["cka"][2, 4]


def test_known_answers_on_a_tiny_net():
    model = tiny_net(["mlp", "identity", "shift", "mlp"])
    an = fxapprox.analyze(model, tiny_batches(), num_samples=32, tokens="all", flops=True, progress=False)
    assert an.score(0, 1, "mse") == 0.0 and an.score(0, 1, "identity") == 0.0
    assert an.score(0, 1, "br") == 0.0 and an.score(0, 1, "cka") == pytest.approx(1.0)
    assert an.score(0, 2, "linear") < 1e-4  # identity then a shift: affine
    assert an.score(0, 3, "linear") > 1e-3
    assert an.top_k(1, span_len=2)[0][:2] == (0, 2)
    assert an.select(2, metric="linear") == [(0, 2)]
    assert an.block_params == [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    assert an.block_flops[1] == 0.0 and an.block_flops[0] > 0 and an.tokens_per_sample == [5] * 5


def test_warns_when_rows_do_not_exceed_the_width():
    model, batches, _ = hf_family("vit")
    with pytest.warns(UnderdeterminedScoreWarning, match="interpolates"):
        an = fxapprox.analyze(model, batches, num_samples=12, tokens="cls", progress=False)
    assert an.notes and "interpolates" in an.to_markdown()


def test_heldout_scores_with_folds():
    model, batches, _ = hf_family("vit")
    with pytest.warns(UnderdeterminedScoreWarning):
        an = fxapprox.analyze(model, batches, num_samples=12, tokens="cls", holdout_folds=2, progress=False)
    held, fit = an.matrix("heldout"), an.matrix("linear")
    finite = np.isfinite(fit)
    assert np.isfinite(held[finite]).all() and (held[finite] > fit[finite]).all()  # 12 rows < width 32
    assert len(an.top_k(3, metric="heldout")) == 3
    assert Analysis.from_json(an.to_json()).top_k(3, metric="heldout") == an.top_k(3, metric="heldout")
    with pytest.raises(ValueError, match="holdout_folds"):
        table().top_k(3, metric="heldout")


def test_no_warning_with_enough_rows():
    model = tiny_net(["mlp", "mlp"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedScoreWarning)
        an = fxapprox.analyze(model, tiny_batches(), num_samples=32, tokens="all", progress=False)
    assert an.notes == []


# --- Algorithm 1 on hand-made tables ---------------------------------------------------------------

def table(num_blocks=6, seed=0, ties=True) -> Analysis:
    rng = np.random.default_rng(seed)
    n = num_blocks + 1
    scores = {}
    for m in METRICS:
        mat = np.full((n, n), np.nan)
        for s in range(-1, num_blocks - 1):
            for e in range(s + 1, num_blocks):
                if m == "br" and e != s + 1:
                    continue
                v = float(rng.integers(0, 5)) / 4 if ties else float(rng.random())
                mat[s + 1, e + 1] = -v if m == "br" else v
        scores[m] = mat
    return Analysis(model="hand-made", num_blocks=num_blocks, tokens="cls", samples=50, rows=50,
                    widths=[8] * n, ridge=1e-6, scores=scores, block_params=[100] * num_blocks,
                    total_params=1000, block_flops=[1000.0] * num_blocks, total_flops=10000.0,
                    tokens_per_sample=[1] * n)


def brute_force_top_k(an, k, span_len, metric):
    """Algorithm 1 literally: enumerate i < j, skip other lengths, sort ascending error, take k."""
    cands = []
    for i in range(-1, an.num_blocks):
        for j in range(i + 1, an.num_blocks):
            v = an.scores[metric][i + 1, j + 1]
            if (span_len is not None and j - i != span_len) or math.isnan(v):
                continue
            cands.append((i, j, float(v)))
    err = (lambda c: c[2]) if metric not in ("br", "cka") else (lambda c: -c[2])
    return sorted(cands, key=err)[:k]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("span_len", [None, 1, 2, 4])
@pytest.mark.parametrize("ties", [True, False])
def test_top_k_equals_brute_force_sort(metric, span_len, ties):
    an = table(ties=ties, seed=hash((metric, span_len)) % 100)
    for k in (1, 3, 50):
        assert an.top_k(k, span_len=span_len, metric=metric) == brute_force_top_k(an, k, span_len, metric)


def test_top_k_ranks_similarities_descending_and_linear_ascending():
    an = table(ties=False)
    lin = [v for _, _, v in an.top_k(10)]
    cka = [v for _, _, v in an.top_k(10, metric="cka")]
    assert lin == sorted(lin) and cka == sorted(cka, reverse=True)
    assert all(e == s + 1 for s, e, _ in an.top_k(10, metric="br"))


def test_score_errors_name_the_problem():
    an = table()
    with pytest.raises(SpanError, match="single blocks"):
        an.score(0, 3, "br")
    with pytest.raises(SpanError, match="out of range"):
        an.score(3, 2)
    with pytest.raises(ValueError, match="not one of"):
        an.top_k(3, metric="bogus")


def test_select_budgets():
    an = table(ties=False)
    spans = an.select(3, metric="linear")
    assert sum(e - s for s, e in spans) == 3
    # 100 params per block, a linear of width 8 costs 72: a span of n blocks saves 100n - 72.
    spans = an.select(param_budget=0.25, metric="linear")
    assert sum(100 * (e - s) - 72 for s, e in spans) >= 250
    ident = an.select(param_budget=0.3, transform="identity", metric="linear")
    assert sum(e - s for s, e in ident) >= 3
    # 1000 FLOPs per block, a linear on 1 token of width 8 costs 2 * 8 * 8 = 128.
    assert sum(1000 * (e - s) - 128 for s, e in an.select(flops_budget=0.2, metric="linear")) >= 2000
    with pytest.raises(SpanError, match="exactly one"):
        an.select(2, param_budget=0.1, metric="linear")


# --- rendering ------------------------------------------------------------------------------------------

def test_json_round_trip(tmp_path):
    an = table(ties=False)
    text = an.to_json(tmp_path / "a.json")
    for source in (text, tmp_path / "a.json", str(tmp_path / "a.json")):
        back = Analysis.from_json(source)
        for m in METRICS:
            np.testing.assert_array_equal(back.scores[m], an.scores[m])
        assert back.top_k(5) == an.top_k(5) and back.block_params == an.block_params


def test_markdown_lists_every_span_ranked():
    an = table(num_blocks=4, ties=False)
    md = an.to_markdown()
    body = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(body) == len(an.spans("linear")) == 10
    assert [line.split(" | ")[0] for line in body] == [f"| {r}" for r in range(1, 11)]
    s, e, _ = an.top_k(1)[0]
    assert body[0].startswith(f"| 1 | {s} → {e} | {e - s} |")


def _png_is_nontrivial(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    rgb = (img[..., :3] * 255).astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    return path.stat().st_size > 10_000 and img.shape[0] > 300 and len(colours) > 100


def test_heatmaps_are_written(tmp_path):
    an = table(num_blocks=5, ties=False)
    assert _png_is_nontrivial(an.plot(tmp_path / "linear.png", metric="linear"))
    assert _png_is_nontrivial(an.plot(tmp_path / "all.png"))


def test_cli_analyze(tmp_path, capsys):
    import datasets
    import transformers as tf
    from PIL import Image

    torch.manual_seed(0)
    model = tf.ViTModel(tf.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, image_size=32, patch_size=8))
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)) for _ in range(12)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(12)]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "data"))
    import argparse

    from fxapprox.cli import analyze as analyze_cli

    parser = argparse.ArgumentParser(prog="fxapprox")
    analyze_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--samples", "10",
               "--tokens", "all", "--image-size", "32", "--batch-size", "4", "--top", "3", "--no-progress",
               "--json", str(tmp_path / "a.json"), "--heatmap", str(tmp_path / "a.png"), "--heatmap-metric", "cka",
               "--markdown", str(tmp_path / "a.md"), "--holdout-folds", "2", "--output-samples", "2",
               "--output-max-len", "2"])
    rc = args.func(args)
    out = capsys.readouterr().out
    assert rc == 0 and "top 3 spans by output" in out  # the default ranking
    an = Analysis.from_json(tmp_path / "a.json")
    assert an.samples == 10 and an.num_blocks == 3 and an.tokens == "all" and "heldout" in an.scores
    assert an.output_samples == 2 and len(an.spans("output")) == 5  # spans of 1-2 of 3 blocks
    assert (tmp_path / "a.png").stat().st_size > 10_000 and (tmp_path / "a.md").read_text().startswith("## Span")


def test_cost_orders_every_metric_like_top_k():
    an = table(ties=False)
    for m in METRICS:
        costs = [cost(m, v) for _, _, v in an.top_k(100, metric=m)]
        assert costs == sorted(costs)


def test_bad_arguments_are_named():
    model = tiny_net(["mlp", "mlp"])
    with pytest.raises(ValueError, match="tokens='first'"):
        fxapprox.analyze(model, tiny_batches(), tokens="first")
    with pytest.raises(ValueError, match="num_samples=0"):
        fxapprox.analyze(model, tiny_batches(), num_samples=0)
    with pytest.raises(ValueError, match="transform="):
        table().select(2, transform="quadratic", metric="linear")
    with pytest.raises(SpanError, match="budget"):
        table().select(param_budget=1.5, metric="linear")


def test_heldout_separates_an_affine_span_from_one_that_only_looks_affine_on_few_samples():
    """With fewer [CLS] rows than dimensions the in-sample fit interpolates: the plain linear
    score calls both spans affine; the held-out residual finds the one that really is.

    Span (-1, 0) is exactly affine (block 0 adds a constant) on inputs of rank 12 (the embedding
    is a Linear from 12 features); span (1, 3) is two strongly non-linear blocks on full-rank
    width-32 inputs, seen on only 24 rows."""
    model = tiny_net(["shift", "mlp", "mlp", "mlp"])
    with torch.no_grad():
        for b in model.blocks[1:]:
            b.fc1.weight.mul_(8.0)
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 5, 12, generator=g) for _ in range(6)]  # 24 [CLS] rows < width 32
    with pytest.warns(UnderdeterminedScoreWarning, match="interpolates"):
        an = fxapprox.analyze(model, batches, num_samples=24, tokens="cls", holdout_folds=3, progress=False)
    affine, nonlinear = (-1, 0), (1, 3)
    assert an.score(*affine, metric="linear") < 1e-2 and an.score(*nonlinear, metric="linear") < 1e-2
    assert an.score(*affine, metric="heldout") < 1e-2
    assert an.score(*nonlinear, metric="heldout") > 10 * an.score(*affine, metric="heldout") + 0.05


# --- the output score ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", ["all", "cls"])  # "all": the scores' moments fit the maps; "cls": a second pass
def test_output_score_is_the_error_of_the_compressed_model_on_the_held_out_samples(tokens):
    model, _, _ = hf_family("vit")
    model = model.double()
    batches = _batches("vit", n_batches=7)  # 56 samples of 8 per batch: fit on 0..35, held out 36..47
    an = fxapprox.analyze(model, batches, num_samples=36, tokens=tokens, output_samples=12, progress=False)
    assert an.output_samples == 12 and an.capture_path.startswith("eager block hooks; output score: ")
    held = torch.cat([b["pixel_values"] for b in batches])[36:48]
    with torch.no_grad():
        original = model(pixel_values=held).last_hidden_state[:, 0]
    for span in [(-1, 0), (0, 2), (1, 3)]:
        res = fxapprox.compress(model, batches, spans=[span], num_samples=36, progress=False)
        with torch.no_grad():
            replaced = res.module(pixel_values=held).last_hidden_state[:, 0]
        want = float((replaced - original).norm() / original.norm())
        assert an.score(*span, metric="output") == pytest.approx(want, rel=1e-5), span


def test_output_score_ranks_the_affine_span_first():
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp", "mlp"])  # blocks 2..3 add constants: span (1, 3)
    an = fxapprox.analyze(model, tiny_batches(n_batches=6), num_samples=32, tokens="all", output_samples=16,
                          output_max_len=3, progress=False)
    assert an.top_k(1, span_len=2, metric="output")[0][:2] == (1, 3)
    assert an.score(1, 3, "output") < 1e-4 < min(v for s, e, v in an.top_k(10, span_len=2, metric="output")[1:])
    assert an.select(2, metric="output") == an.select(2) == [(1, 3)]  # output: the default
    assert math.isnan(an.matrix("output")[0, 4]) and len(an.spans("output")) == len(an.spans("linear")) - 6
    with pytest.raises(SpanError, match="output_max_len"):
        an.score(-1, 3, "output")


def test_output_score_survives_json_and_renders(tmp_path):
    an = fxapprox.analyze(tiny_net(["mlp", "shift", "mlp"]), tiny_batches(n_batches=6), num_samples=40,
                          tokens="cls", output_samples=8, progress=False)
    back = Analysis.from_json(an.to_json())
    np.testing.assert_array_equal(back.scores["output"], an.scores["output"])
    assert back.output_samples == 8 and back.top_k(3, metric="output") == an.top_k(3, metric="output")
    assert "| output |" in back.to_markdown(metric="output") and "8 held-out samples" in back.to_markdown()
    assert _png_is_nontrivial(back.plot(tmp_path / "output.png", metric="output"))


def test_output_score_needs_samples_after_the_calibration_ones():
    model = tiny_net(["mlp", "mlp"])
    with pytest.raises(ValueError, match="gave 32 samples.*needs 40"):
        fxapprox.analyze(model, tiny_batches(), num_samples=24, output_samples=16, progress=False)
    with pytest.raises(ValueError, match="output_samples=-1"):
        fxapprox.analyze(model, tiny_batches(), output_samples=-1)
    with pytest.raises(ValueError, match="output_samples="):
        table().top_k(3, metric="output")

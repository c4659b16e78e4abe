"""The `output` score on the model's real output (logits of a head, final features of a backbone), the
`output` default of `compress(num_blocks=k)` / `Analysis.select`, and every selectable metric in `compress`."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import _text_batches, _vision_batches, tiny_batches, tiny_net

import fxapprox
from fxapprox.errors import MissingScoreError, UnsupportedOutputError
from fxapprox.metrics import METRIC_INFO

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


def _head_model(name: str):
    """A tiny classifier (float64, so that scores and direct comparisons agree closely) and 6 batches of 4."""
    import transformers as tf

    torch.manual_seed(0)
    if name == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**SMALL, image_size=32, patch_size=8, num_labels=5))
        batches = _vision_batches(n_batches=6)
    else:
        model = tf.BertForSequenceClassification(tf.BertConfig(**SMALL, vocab_size=100, num_labels=3))
        batches = _text_batches(100, n_batches=6)
    with torch.no_grad():  # a head strong enough that the predictions differ between spans
        model.classifier.weight.mul_(20.0)
    return model.double().eval(), [{k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
                                   for b in batches]


def _cat(batches):
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_output_score_on_logits_equals_compress_and_compare(name):
    model, batches = _head_model(name)
    an = fxapprox.analyze(model, batches, num_samples=12, tokens="all", output_samples=8, progress=False)
    assert an.output_target == "logits" and an.output_agreement is not None
    held = _cat(batches[3:5])  # the 8 samples after the 12 calibration ones
    with torch.no_grad():
        log_p = torch.log_softmax(model(**held).logits, dim=-1)
    for span in [(-1, 0), (0, 2), (1, 3)]:
        res = fxapprox.compress(model, batches, spans=[span], num_samples=12, progress=False)
        with torch.no_grad():
            logits = res.module(**held).logits
        log_q = torch.log_softmax(logits, dim=-1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        agreement = float((logits.argmax(-1) == log_p.argmax(-1)).double().mean())
        assert an.score(*span, metric="output") == pytest.approx(kl, rel=1e-6, abs=1e-12), span
        assert an.output_agreement[span[0] + 1, span[1] + 1] == pytest.approx(agreement), span
    back = fxapprox.Analysis.from_json(an.to_json())
    assert back.output_target == "logits"
    torch.testing.assert_close(torch.as_tensor(back.output_agreement), torch.as_tensor(an.output_agreement),
                               equal_nan=True)


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_compress_by_output_takes_a_model_with_a_head(name):
    model, batches = _head_model(name)
    res = fxapprox.compress(model, batches, num_blocks=2, num_samples=12, progress=False)  # output: the default
    assert sum(e - s for s, e in res.spans) == 2
    with torch.no_grad():
        assert res.module(**batches[0]).logits.shape == model(**batches[0]).logits.shape


def test_output_target_features_on_a_head_reads_the_last_block_and_logits_needs_logits():
    model, batches = _head_model("vit")
    an = fxapprox.analyze(model, batches, num_samples=12, tokens="all", output_samples=8, output_target="features",
                          progress=False)
    assert an.output_target == "features" and an.output_agreement is None
    assert an.score(2, 3, "output") > 0 and all(math.isfinite(v) for *_, v in an.top_k(100, metric="output"))
    with pytest.raises(UnsupportedOutputError, match="without logits"):
        fxapprox.analyze(tiny_net(["mlp", "mlp"]), tiny_batches(n_batches=6), num_samples=32, output_samples=8,
                         output_target="logits", progress=False)
    with pytest.raises(ValueError, match="not one of"):
        fxapprox.compress(model, batches, num_blocks=1, output_target="probs", progress=False)


def test_compress_and_select_choose_by_output_by_default(monkeypatch):
    import fxapprox.stages.select as select_stage  # compress's select stage

    called = []
    real = select_stage.output_scores
    monkeypatch.setattr(select_stage, "output_scores", lambda *a, **k: called.append(1) or real(*a, **k))
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp", "mlp"])
    assert fxapprox.compress(model, tiny_batches(), num_blocks=2, num_samples=32, progress=False).spans == [(1, 3)]
    assert called
    an = fxapprox.analyze(model, tiny_batches(), num_samples=32, tokens="all", progress=False)
    with pytest.raises(MissingScoreError, match="output_samples=128"):
        an.select(2)
    assert an.select(2, metric="linear") == [(1, 3)]


@pytest.mark.parametrize("metric", list(METRIC_INFO))
def test_compress_takes_every_metric_select_takes(metric):
    model = tiny_net(["mlp", "mlp", "shift", "shift", "mlp", "mlp"])
    res = fxapprox.compress(model, tiny_batches(), num_blocks=2, metric=metric, num_samples=32, progress=False)
    assert sum(e - s for s, e in res.spans) == 2
    if metric == "heldout":  # the same 2-fold split (batch i → fold i mod 2) as analyze's
        an = fxapprox.analyze(model, tiny_batches(), num_samples=32, tokens="all", holdout_folds=2, progress=False)
        assert res.spans == an.select(2, metric="heldout") == [(1, 3)]


def test_compress_names_the_metrics_it_takes():
    with pytest.raises(MissingScoreError, match="heldout.*output.*not 'bogus'"):
        fxapprox.compress(tiny_net(["mlp", "mlp"]), tiny_batches(), num_blocks=1, metric="bogus", progress=False)


def test_cli_analyze_and_compress_take_a_classifier(tmp_path, capsys):
    """A saved ViTForImageClassification keeps its head through the CLI; both commands score its logits."""
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from fxapprox.cli import main

    model, _ = _head_model("vit")
    model.float().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)) for _ in range(16)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(16)]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "data"))
    common = [str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--samples", "8", "--image-size", "32",
              "--batch-size", "4", "--no-progress"]
    assert main(["analyze", *common, "--tokens", "all", "--output-samples", "4", "--json",
                 str(tmp_path / "a.json")]) == 0
    assert "spans by output" in capsys.readouterr().out
    an = fxapprox.Analysis.from_json(tmp_path / "a.json")
    assert an.output_target == "logits" and len(an.spans("output")) == 10  # spans of up to 4 of 4 blocks
    assert main(["compress", *common, "--num-blocks", "1", "--out", str(tmp_path / "plan")]) == 0
    assert (tmp_path / "plan" / "plan.json").exists()

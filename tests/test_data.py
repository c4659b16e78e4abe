"""fxapprox.study.data: images/texts → model kwargs; seeded random calibration subsets."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from fxapprox.inputs import as_model_inputs
from fxapprox.study import assets, data


def _image_dataset(n: int = 40) -> datasets.DatasetDict:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L") for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(n)]}, features=features)
    return datasets.DatasetDict({"train": ds, "test": ds.select(range(min(n, 8)))})


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "good": 3, "bad": 4, "film": 5, "very": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_grey_images_become_normalised_three_channel_tensors():
    proc = data.ImagePreprocessor(size=56)
    white = Image.new("L", (28, 28), 255)
    black = Image.new("L", (28, 28), 0)
    x = proc([{"image": white}, {"image": black}])["pixel_values"]
    assert x.shape == (2, 3, 56, 56) and x.dtype == torch.float32
    mean, std = torch.tensor(data.IMAGENET_MEAN), torch.tensor(data.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 10, 10], (1 - mean) / std)
    torch.testing.assert_close(x[1, :, 10, 10], -mean / std)


def test_rgb_arrays_keep_their_channels():
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    x = data.ImagePreprocessor(size=28, mean=(0, 0, 0), std=(1, 1, 1)).encode([rgb])["pixel_values"]
    assert x[0, :, 5, 5].tolist() == [0.0, 1.0, 0.0]


def test_calibration_loader_draws_a_seeded_uniform_subset():
    dsd = _image_dataset()
    proc = data.ImagePreprocessor(size=14)
    loader = data.calibration_loader(proc, dsd, num_samples=10, batch_size=4, seed=3)
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [4, 4, 2]
    assert set(batches[0]) == {"pixel_values"}
    assert as_model_inputs(batches[0]).batch_size == 4
    again = torch.cat([b["pixel_values"] for b in loader])
    torch.testing.assert_close(torch.cat([b["pixel_values"] for b in batches]), again)
    other = torch.cat([b["pixel_values"] for b in data.calibration_loader(proc, dsd, num_samples=10, seed=4)])
    assert not torch.equal(again, other)
    rows = data.random_subset(dsd["train"], 10, seed=3)
    assert len(set(rows["label"])) > 1 and len(rows) == 10


def test_subset_larger_than_the_split_uses_it_all():
    dsd = _image_dataset(6)
    loader = data.calibration_loader(data.ImagePreprocessor(size=14), dsd, num_samples=50, batch_size=4)
    assert sum(b["pixel_values"].shape[0] for b in loader) == 6


def test_missing_split_is_named():
    with pytest.raises(KeyError, match="validation"):
        data.calibration_loader(data.ImagePreprocessor(), _image_dataset(), split="validation", num_samples=2)


def test_data_loader_adds_labels_on_request():
    loader = data.data_loader(data.ImagePreprocessor(size=14), _image_dataset(), split="test",
                              batch_size=8, with_labels=True)
    (batch,) = list(loader)
    assert batch["labels"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_texts_are_padded_with_an_attention_mask():
    ds = datasets.Dataset.from_dict({"text": ["a good film", "bad", "a very very bad film"],
                                     "label": [1, 0, 0]})
    loader = data.calibration_loader(_word_tokenizer(), ds, num_samples=3, batch_size=3, seed=0)
    (batch,) = list(loader)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] == 5
    assert sorted(mask.sum(1).tolist()) == [1, 3, 5]
    assert (ids[mask == 0] == 0).all()


def test_model_without_a_known_modality_needs_the_dataset():
    with pytest.raises(ValueError, match="images or text"):
        data.make_preprocessor("some/unknown-model")


@pytest.mark.real
def test_dinov2_calibration_batches_from_mnist_5k():
    dsd = assets.load_dataset("mnist-5k")
    loader = data.calibration_loader("dinov2-small", dsd, num_samples=12, batch_size=8, size=56, seed=0)
    shapes = [b["pixel_values"].shape for b in loader]
    assert shapes == [(8, 3, 56, 56), (4, 3, 56, 56)]


@pytest.mark.real
def test_minilm_calibration_batches_from_rotten_tomatoes():
    dsd = assets.load_dataset("rotten-tomatoes")
    loader = data.calibration_loader("minilm-l6", dsd, num_samples=16, batch_size=16, seed=0)
    (batch,) = list(loader)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 16 and ids.shape[1] <= data.DEFAULT_MAX_LENGTH
    assert (ids[mask == 0] == 0).all() and (mask.sum(1) > 2).all()
    assert (ids[:, 0] == 101).all()  # [CLS]


def test_images_of_different_sizes_and_modes_share_one_batch():
    rgb = Image.new("RGB", (40, 30), (255, 0, 0))
    grey = Image.new("L", (28, 28), 128)
    x = data.ImagePreprocessor(size=32, mean=(0, 0, 0), std=(1, 1, 1)).encode([rgb, grey])["pixel_values"]
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(x[1, :, 16, 16], torch.full((3,), 128 / 255))

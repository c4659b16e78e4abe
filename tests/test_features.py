"""fxapprox.features: any model output → final hidden states → [CLS] or masked-mean features."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from fxapprox.features import last_hidden_state, pool_features


def test_cls_and_masked_mean_pooling():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, 1e6]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool_features(hidden, None).tolist() == [[1.0, 2.0]]
    assert pool_features(hidden, mask).tolist() == [[2.0, 3.0]]
    assert pool_features(hidden, None, "mean")[0, 0] > 1e5
    with pytest.raises(ValueError, match="pooling"):
        pool_features(hidden, None, "max")


@pytest.mark.parametrize("wrap", [lambda h: h, lambda h: (h, None), lambda h: {"last_hidden_state": h},
                                  lambda h: BaseModelOutput(last_hidden_state=h)])
def test_last_hidden_state_from_any_output(wrap):
    h = torch.ones(1, 2, 3)
    assert last_hidden_state(wrap(h)) is h

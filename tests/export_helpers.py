"""Tiny random Hugging Face models, calibration batches and ONNX graph inspection for the export tests."""

from __future__ import annotations

import ast
from collections import Counter

import numpy as np
import onnx
import torch
from torch import nn

__all__ = [
    "tiny_vit",
    "tiny_dinov2",
    "tiny_bert",
    "image_batches",
    "token_batches",
    "perturb",
    "compress",
    "ops_by_scope",
    "initializer_arrays",
    "contains_array",
]

HIDDEN, LAYERS, IMAGE, PATCH, VOCAB = 32, 4, 32, 8, 100


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter distinct random values (fresh models share zero biases and unit norms,
    which the exporter stores once)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                    image_size=IMAGE, patch_size=PATCH)
    return perturb(ViTModel(cfg))


def tiny_dinov2() -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, mlp_ratio=2,
                       image_size=IMAGE, patch_size=PATCH)
    return perturb(Dinov2Model(cfg), seed=1)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=64)
    return perturb(BertModel(cfg), seed=2)


def image_batches(n: int = 4, batch: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, IMAGE, IMAGE, generator=gen) for _ in range(n)]


def token_batches(n: int = 4, batch: int = 16, seq: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (batch, seq), generator=gen)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[::3, seq - 3:] = 0  # some right padding
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def compress(model: nn.Module, batches: list, spans: list[tuple[int, int]], transform: str):
    import fxapprox

    return fxapprox.compress(model, batches, spans=spans, transform=transform, num_samples=64, progress=False)


def ops_by_scope(path, blocks: str) -> dict[str, Counter]:
    """ONNX file → op-type counts per block (`"1"`, ...), per span Linear (`fxapprox_blocks_1_to_2`)
    and `"other"`, read from the exporter's `pkg.torch.onnx.name_scopes` node metadata."""
    model = onnx.load(str(path))
    out: dict[str, Counter] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        key = "other"
        for scope in scopes:
            if scope.startswith("fxapprox_blocks_"):
                key = scope
            elif scope.startswith(blocks + ".") and scope.count(".") == blocks.count(".") + 1:
                key = scope.rsplit(".", 1)[1]
        out.setdefault(key, Counter())[node.op_type] += 1
    return out


def initializer_arrays(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]


def contains_array(arrays: list[np.ndarray], target: torch.Tensor) -> bool:
    """Whether `target` (or its transpose) is stored among `arrays`, by value."""
    t = target.detach().numpy()
    cands = [t, t.T] if t.ndim == 2 else [t]
    return any(a.shape == c.shape and np.allclose(a, c, atol=0, rtol=1e-6) for a in arrays for c in cands)

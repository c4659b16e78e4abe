"""Tiny models with known answers, and small random-initialised models of every supported family."""

from __future__ import annotations

import torch
from torch import nn

IN_FEATURES, WIDTH, TOKENS = 12, 32, 5


class Block(nn.Module):
    """Residual block whose behaviour is chosen per instance: "mlp", "shift" (x + c) or "identity"."""

    def __init__(self, d: int, kind: str = "mlp"):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.shift = nn.Parameter(torch.randn(d))
        self.register_buffer("scale", torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        if self.kind == "shift":
            return x + self.shift
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x)))) * self.scale


class TinyNet(nn.Module):
    """Embedding Linear → ModuleList of `Block`s → LayerNorm + head; input `(batch, tokens, 12)`."""

    def __init__(self, kinds: list[str], d: int = WIDTH):
        super().__init__()
        self.embed = nn.Linear(IN_FEATURES, d)
        self.blocks = nn.ModuleList(Block(d, k) for k in kinds)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def tiny_net(kinds: list[str], seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(kinds).eval()


def tiny_batches(n_batches: int = 4, batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, TOKENS, IN_FEATURES, generator=g) for _ in range(n_batches)]


# --- Hugging Face families (small random configs) -------------------------------------------

IMAGE = 32


def _vision_batches(n_batches=3, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g)} for _ in range(n_batches)]


def _text_batches(vocab, n_batches=3, batch=4, seq=9, seed=1, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[1, seq // 2:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def hf_family(name: str):
    """(model, calibration batches, a differently-sized batch) for family `name`."""
    import transformers as tf

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    if name == "vit":
        model = tf.ViTModel(tf.ViTConfig(**small, image_size=IMAGE, patch_size=8))
    elif name == "deit":
        model = tf.DeiTModel(tf.DeiTConfig(**small, image_size=IMAGE, patch_size=8))
    elif name == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**small, image_size=IMAGE, patch_size=8))
    elif name == "clip-vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**small, image_size=IMAGE, patch_size=8))
    elif name == "bert":
        model = tf.BertModel(tf.BertConfig(**small, vocab_size=100))
    elif name == "modernbert":
        model = tf.ModernBertModel(tf.ModernBertConfig(**small, vocab_size=100, global_attn_every_n_layers=2,
                                                       local_attention=4, pad_token_id=0))
    elif name == "mpnet":  # post-norm, relative position bias added in place to every block's scores
        model = tf.MPNetModel(tf.MPNetConfig(**small, vocab_size=100))
    elif name == "llama":
        model = tf.LlamaModel(tf.LlamaConfig(**small, vocab_size=100, num_key_value_heads=2))
    else:
        raise KeyError(name)
    model.eval()
    if name in ("vit", "deit", "dinov2", "clip-vision"):
        batches = _vision_batches()
        other = {"pixel_values": torch.randn(3, 3, IMAGE, IMAGE)}
    else:
        batches = _text_batches(100)
        other = {"input_ids": torch.randint(5, 100, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long)}
    return model, batches, other


HF_FAMILIES = ["vit", "deit", "dinov2", "clip-vision", "bert", "modernbert", "mpnet", "llama"]


def torchvision_vit():
    """torchvision ViT (head given random weights: torchvision starts it at zeros)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=IMAGE, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight)
    return model.eval()


def timm_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE, patch_size=8,
                             embed_dim=32, depth=4, num_heads=2, num_classes=5).eval()


# --- attention + MLP blocks (half units) -------------------------------------------------------

class HalfBlock(nn.Module):
    """Pre-norm block `M = x + attn(x)`, `H = M + mlp(norm(M))` ("pre"), or the same with the
    branches side by side, `H = x + attn(x) + mlp(norm(x))` ("parallel"). `affine=True` makes the
    attention branch a per-token Linear (so `x → M` is exactly affine); else softmax attention."""

    def __init__(self, d: int, affine: bool = False, layout: str = "pre"):
        super().__init__()
        self.affine, self.layout = affine, layout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine:
            return self.proj(x)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj(weights @ v)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "parallel":
            return x + self.attn(x) + self.mlp(x)
        m = x + self.attn(x)
        return m + self.mlp(m)


class HalfNet(TinyNet):
    """`TinyNet` with `HalfBlock`s: input `(batch, tokens, 12)`."""

    def __init__(self, num_blocks: int = 3, affine: bool = False, layout: str = "pre", d: int = WIDTH):
        super().__init__([], d)
        self.blocks = nn.ModuleList(HalfBlock(d, affine, layout) for _ in range(num_blocks))


def half_net(num_blocks: int = 3, affine: bool = False, layout: str = "pre", seed: int = 0) -> HalfNet:
    torch.manual_seed(seed)
    return HalfNet(num_blocks, affine, layout).eval()

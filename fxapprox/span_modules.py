"""Plan weights → the modules a rewrite inserts for a span, and refined parameters → the rewritten graph.

* `transform="linear"`: an `nn.Linear` holding the closed-form map `x W + b`.
* `transform="mlp"`: `ResidualMLP`, that map plus a bottleneck MLP on a LayerNorm of `x`
  (`up(gelu(down(norm(x))))`) whose output layer starts at zero, so that before training it
  computes exactly the closed-form map. Its weights are the plan's `span.s.e.weight` / `.bias`
  (the affine map, `(in, out)` as fitted) and `span.s.e.mlp.<name>` (the MLP's state dict).
* Refined parameters of the rest of the model (`refine="output"` with norms, or folded maps)
  are plan weights named `refined.<parameter path>`; `set_parameter` puts each into the
  rewritten graph as a new parameter, copying the modules on its path, so nothing shared with
  the original model is written to.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fxapprox.errors import PlanMismatchError

__all__ = ["ResidualMLP", "affine_linear", "residual_mlp", "mlp_weights", "set_parameter", "apply_refined",
           "REFINED_PREFIX", "MLP_KEY"]

REFINED_PREFIX = "refined."
MLP_KEY = "mlp"  # plan weights of a span's MLP: f"{span key}.mlp.<state dict name>"


class ResidualMLP(nn.Module):
    """`x ↦ linear(x) + up(gelu(down(norm(x))))`: a closed-form affine map plus a bottleneck MLP."""

    def __init__(self, linear: nn.Linear, hidden: int):
        super().__init__()
        d_in, d_out = linear.in_features, linear.out_features
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.linear = linear
        self.norm = nn.LayerNorm(d_in, **like)
        self.down = nn.Linear(d_in, hidden, **like)
        self.up = nn.Linear(hidden, d_out, **like)
        with torch.no_grad():
            self.up.weight.zero_()
            self.up.bias.zero_()

    @property
    def hidden(self) -> int:
        """Width of the bottleneck."""
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.up(nn.functional.gelu(self.down(self.norm(x))))


def affine_linear(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Linear:
    """`x @ weight + bias` (`weight` as fitted, `(in, out)`) → an `nn.Linear` in the dtype and device of `like`."""
    lin = nn.Linear(weight.shape[0], weight.shape[1], device=like.device, dtype=like.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.T)
        lin.bias.copy_(bias)
    return lin.requires_grad_(False)


def residual_mlp(weights: dict[str, torch.Tensor], key: str, like: torch.Tensor) -> ResidualMLP:
    """The `ResidualMLP` of span `key` from plan weights (see the module docstring)."""
    prefix = f"{key}.{MLP_KEY}."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if "down.weight" not in state:
        raise PlanMismatchError(f"the plan's mlp span {key} has no weights {prefix}*: the plan is incomplete")
    module = ResidualMLP(affine_linear(weights[f"{key}.weight"], weights[f"{key}.bias"], like),
                         state["down.weight"].shape[0])
    module.load_state_dict({f"linear.{n}": p for n, p in module.linear.state_dict().items()} | state)
    return module.requires_grad_(False)


def mlp_weights(module: ResidualMLP, key: str) -> dict[str, torch.Tensor]:
    """A `ResidualMLP`'s plan weights under span `key` (the inverse of `residual_mlp`)."""
    out = {f"{key}.weight": module.linear.weight.detach().T.double().clone(),
           f"{key}.bias": module.linear.bias.detach().double().clone()}
    out.update({f"{key}.{MLP_KEY}.{n}": v.detach().clone() for n, v in module.state_dict().items()
                if not n.startswith("linear.")})
    return out


def _own(module: nn.Module) -> nn.Module:
    """A shallow twin of `module`: its own parameter, buffer and submodule tables, the same tensors."""
    twin = copy.copy(module)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    return twin


def set_parameter(gm: nn.Module, path: str, value: torch.Tensor, *, requires_grad: bool = False) -> nn.Parameter:
    """Make `value` the parameter at dotted `path` of `gm`; every module on the path below `gm` is
    replaced by a shallow twin first, so a module `gm` shares with another model is not written to.
    `value` takes the dtype and device of the parameter it replaces."""
    *owners, name = path.split(".")
    module = gm
    for part in owners:
        child = module._modules.get(part)
        if child is None:
            raise PlanMismatchError(f"the rewritten model has no module {part!r} on the path of parameter {path!r}")
        module._modules[part] = module = _own(child)
    old = module._parameters.get(name)
    if old is None:
        raise PlanMismatchError(f"the rewritten model has no parameter {path!r}")
    if tuple(value.shape) != tuple(old.shape):
        raise PlanMismatchError(f"the plan's refined {path!r} has shape {tuple(value.shape)}, the model's "
                                f"parameter {tuple(old.shape)}: load the plan into the model it was made on")
    param = nn.Parameter(value.to(old.device, old.dtype), requires_grad=requires_grad)
    module._parameters[name] = param
    return param


def apply_refined(gm: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Set every `refined.<path>` plan weight on `gm` (see `set_parameter`) → the paths set."""
    paths = sorted(k[len(REFINED_PREFIX):] for k in weights if k.startswith(REFINED_PREFIX))
    for path in paths:
        set_parameter(gm, path, weights[REFINED_PREFIX + path])
    return paths

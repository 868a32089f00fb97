"""Which modules of a torch model take the structured NTK path (see :mod:`.structured`).

A module qualifies when it is an unmodified ``nn.Linear``, Hugging Face ``Conv1D``,
``nn.Conv2d`` (``groups=1``, zero padding) or ``nn.Embedding`` (dense, no ``max_norm``, no
``scale_grad_by_freq``), or the projections of an unmodified ``nn.MultiheadAttention``, and
its selected parameters belong to no other module and have scalar prior variances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hessntk._model import is_hf_conv1d
from hessntk.ntk import _matmul_calls
from hessntk.ntk._common import Problem

KINDS = {nn.Linear: "linear", nn.Conv2d: "conv2d", nn.Embedding: "embedding"}


@dataclass
class Layer:
    """A module whose NTK blocks are computed from factors."""

    name: str
    module: nn.Module
    kind: str
    weight: str | None  # canonical name of the selected weight, if selected
    bias: str | None
    s_weight: float = 0.0
    s_bias: float = 0.0
    #: "module": a forward hook on ``module`` records its calls; "matmul": the products of
    #: the weight are recorded below autograd (``nn.MultiheadAttention``'s projections).
    calls: str = "module"

    @property
    def names(self) -> list[str]:
        return [k for k in (self.weight, self.bias) if k is not None]


def _qualifies(m: nn.Module) -> str | None:
    if is_hf_conv1d(m):
        return "conv1d"
    for cls, kind in KINDS.items():
        if type(m).forward is cls.forward and isinstance(m, cls):
            if kind == "conv2d":
                if m.groups != 1 or m.padding_mode != "zeros":
                    return None
                if isinstance(m.padding, str) and m.padding != "valid":
                    return None
            if kind == "embedding" and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
                return None
            return kind
    return None


def _roles(
    problem: Problem, params: dict[str, torch.nn.Parameter | None],
    selected: dict[int, str], owners: dict[int, int],
) -> dict[str, str]:
    """Role ("weight"/"bias") -> canonical name of the selected parameters that qualify."""
    names = {}
    for role, p in params.items():
        if p is None or id(p) not in selected or owners[id(p)] != 1:
            continue
        if torch.is_tensor(problem.variances[selected[id(p)]]):
            continue
        names[role] = selected[id(p)]
    return names


def _layer(problem: Problem, name: str, m: nn.Module, kind: str, roles: dict[str, str],
           calls: str = "module") -> Layer:
    s = problem.variances
    return Layer(
        name=name, module=m, kind=kind, weight=roles.get("weight"), bias=roles.get("bias"),
        s_weight=float(s[roles["weight"]]) if "weight" in roles else 0.0,
        s_bias=float(s[roles["bias"]]) if "bias" in roles else 0.0, calls=calls,
    )


def _attention_layers(
    problem: Problem, mname: str, m: nn.MultiheadAttention,
    selected: dict[int, str], owners: dict[int, int],
) -> list[Layer]:
    """The projections of an ``nn.MultiheadAttention`` (recorded as products)."""
    if not _matmul_calls.AVAILABLE or type(m).forward is not nn.MultiheadAttention.forward:
        return []
    if m._qkv_same_embed_dim:
        parts = {"in_proj": {"weight": m.in_proj_weight, "bias": m.in_proj_bias}}
    else:  # separate q/k/v weights; their bias is one packed vector (generic path)
        parts = {k: {"weight": getattr(m, f"{k}_weight")} for k in ("q_proj", "k_proj", "v_proj")}
    parts["out_proj"] = {"weight": m.out_proj.weight, "bias": m.out_proj.bias}
    out = []
    for part, params in parts.items():
        roles = _roles(problem, params, selected, owners)
        if "weight" in roles:  # the products identify the layer by its weight
            out.append(_layer(problem, f"{mname}.{part}", m, "linear", roles, "matmul"))
    return out


def structured_layers(problem: Problem) -> list[Layer]:
    """The modules of ``problem.model`` whose selected parameters take the structured path."""
    selected = {id(p): name for name, p in problem.params.items()}
    owners: dict[int, int] = {}
    for m in problem.model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    layers: list[Layer] = []
    inside_attention: set[int] = set()
    for mname, m in problem.model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            inside_attention.add(id(m.out_proj))  # never called: MHA uses its weight
            layers.extend(_attention_layers(problem, mname, m, selected, owners))
            continue
        kind = _qualifies(m)
        if kind is None or id(m) in inside_attention:
            continue
        roles = _roles(problem, {r: m._parameters.get(r) for r in ("weight", "bias")},
                       selected, owners)
        if roles:
            layers.append(_layer(problem, mname, m, kind, roles))
    return layers

"""Torch-model plumbing shared by :mod:`hessntk.hessian` and :mod:`hessntk.ntk`.

Everything here is about getting from a user's ``torch.nn.Module`` and data to pure functions
of a parameter dict: choosing the parameters (:func:`select_params`; they are flattened to one
vector and back by the shared :class:`hessntk.spectral.layout.ParamLayout`), calling the
model functionally (:func:`call_model`),
walking the data (:func:`iter_batches`) and refusing inputs that would make products random or
wrong (:func:`check_eval_mode`, :func:`check_finite`, :func:`check_batch`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessntk.spectral.layout import ParamLayout

__all__ = [
    "LABELS",
    "dtype_error",
    "ParamWatch",
    "check_loader",
    "loader_sampler",
    "ParamLayout",
    "as_flat",
    "ParamSpec",
    "batch_size",
    "call_model",
    "check_batch",
    "check_eval_mode",
    "check_finite",
    "is_single_batch",
    "iter_batches",
    "ravel_params",
    "select_output",
    "select_params",
    "split_batch",
    "tensor_leaves",
    "to_device",
]

def _load_forward_ad_quietly() -> None:
    """Load torch's forward-mode AD decompositions now, without their deprecation noise.

    On its first forward-mode product in a process, torch scripts its jvp decompositions
    with ``torch.jit.script``, which warns (a DeprecationWarning in torch 2.13, a
    FutureWarning that every user sees in 2.14). hessntk's calls should never print
    third-party noise: it is loaded here once, with those warnings silenced (0.2 s).
    """
    import warnings

    try:
        from torch.autograd.forward_ad import _maybe_load_decompositions
    except ImportError:  # pragma: no cover - another torch layout: nothing to silence
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        _maybe_load_decompositions()


_load_forward_ad_quietly()

ParamSpec = (
    None
    | str
    | Sequence[str]
    | nn.Module
    | Sequence[nn.Module]
    | Callable[[str, nn.Parameter], bool]
)


# -- parameter selection ---------------------------------------------------------------------


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Map every parameter name, aliases of tied weights included, to its canonical name.

    The canonical name is the one :meth:`torch.nn.Module.named_parameters` reports (the first
    name under which a shared tensor is reached), so tied weights are counted once.
    """
    canonical_by_id = {id(p): name for name, p in model.named_parameters()}
    return {
        name: canonical_by_id[id(p)] for name, p in model.named_parameters(remove_duplicate=False)
    }


def select_params(model: nn.Module, params: ParamSpec = None) -> dict[str, nn.Parameter]:
    """Choose the parameters that curvature is taken with respect to.

    Parameters
    ----------
    model : torch.nn.Module
    params : None, str, sequence of str, Module, sequence of Modules, or callable
        ``None``: every parameter with ``requires_grad=True``. Names (as in
        ``model.named_parameters()``; an alias of a tied weight selects the shared tensor). A
        submodule or list of submodules: their parameters. A predicate
        ``(name, param) -> bool`` over ``model.named_parameters()``.

    Returns
    -------
    dict[str, torch.nn.Parameter]
        Selected parameters in ``model.named_parameters()`` order, keyed by canonical name.
        Tied/shared weights appear once.

    Raises
    ------
    ValueError
        If nothing is selected, a name is unknown, a module is not part of ``model``, or a
        selected parameter has ``requires_grad=False``.
    TypeError
        If ``params`` has an unsupported type.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> list(select_params(net, ["2.weight", "0.bias"]))
    ['0.bias', '2.weight']
    >>> list(select_params(net, net[2]))
    ['2.weight', '2.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module; got {type(model).__name__}.")
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name for name, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError(
                "Expected at least one parameter with requires_grad=True; got none "
                f"among {len(named)} parameters. Call p.requires_grad_(True) on the "
                "parameters to differentiate, or pass params=."
            )
    else:
        chosen = _resolve_spec(model, named, params)
        if not chosen:
            raise ValueError(
                "Expected params= to select at least one parameter; got an empty "
                f"selection. Valid names: {_short_list(named)}."
            )
        frozen = sorted(name for name in chosen if not named[name].requires_grad)
        if frozen:
            raise ValueError(
                f"Expected selected parameters to require grad; got requires_grad=False for "
                f"{frozen}. Call .requires_grad_(True) on them or leave them out of params=."
            )
    out = {name: p for name, p in named.items() if name in chosen}
    meta = [name for name, p in out.items() if p.is_meta]
    if meta:
        raise ValueError(
            f"Expected parameters with values; got {_short_list(meta)} on the meta device "
            "(shapes only). Materialise and load the weights first: model.to_empty(device="
            "'cpu') then load_state_dict(...), or from_pretrained(...) without a meta device map."
        )
    return out


def _resolve_spec(model: nn.Module, named: dict[str, nn.Parameter], params: Any) -> set[str]:
    if isinstance(params, nn.Module):
        params = [params]
    if isinstance(params, str):
        params = [params]
    if callable(params):
        return {name for name, p in named.items() if bool(params(name, p))}
    if not isinstance(params, (list, tuple, set, frozenset)):
        raise TypeError(
            "Expected params= to be None, names, module(s) or a predicate (name, param) -> "
            f"bool; got {type(params).__name__}."
        )
    params = list(params)
    if all(isinstance(m, nn.Module) for m in params):
        name_by_id = {id(p): name for name, p in named.items()}
        chosen = set()
        for m in params:
            for p in m.parameters():
                if id(p) not in name_by_id:
                    raise ValueError(
                        f"Expected modules that belong to the model; got a "
                        f"{type(m).__name__} whose parameters are not among "
                        "model.named_parameters(). Pass submodules of the model itself."
                    )
                chosen.add(name_by_id[id(p)])
        return chosen
    if all(isinstance(s, str) for s in params):
        canonical = _canonical_names(model)
        unknown = [s for s in params if s not in canonical]
        if unknown:
            raise ValueError(
                f"Expected parameter names of the model; got unknown names {unknown}. "
                f"Valid names: {_short_list(named)}."
            )
        return {canonical[s] for s in params}
    raise TypeError(
        "Expected params= to be a list of names or a list of modules (not a mix); got "
        f"element types {sorted({type(s).__name__ for s in params})}."
    )


def _short_list(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# -- model state and calls ---------------------------------------------------------------------


def is_hf_conv1d(m: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (GPT-2's projections): ``z = x @ W + b``, ``W`` ``(in, out)``."""
    cls = type(m)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and hasattr(m, "nf") and "forward" in cls.__dict__)


def channel_axes(model: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """The output-channel axis of each named parameter: 1 for a Hugging Face ``Conv1D``
    weight (``(in, out)``), 0 otherwise (``nn.Linear``, ``nn.ConvNd``, ``nn.Embedding``).

    Examples
    --------
    >>> channel_axes(nn.Sequential(nn.Linear(2, 3)), ["0.weight"])
    {'0.weight': 0}
    """
    out = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        out[name] = 1 if leaf == "weight" and is_hf_conv1d(module) else 0
    return out


def _train_mode_matters(m: nn.Module) -> bool:
    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout)):
        return getattr(m, "p", 0.0) > 0
    if isinstance(m, nn.MultiheadAttention):
        return m.dropout > 0
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def check_eval_mode(model: nn.Module, allow_train_mode: bool = False) -> None:
    """Refuse modules whose train-mode behaviour makes curvature products random.

    Dropout (any ``_DropoutNd``, ``AlphaDropout``, ``MultiheadAttention`` with ``dropout>0``)
    makes every product random; batch norm in train mode normalises with batch statistics
    (products depend on how the data is batched) and updates its running statistics on every
    call. Instance norm with ``track_running_stats=True`` is refused for the latter reason.

    Parameters
    ----------
    model : torch.nn.Module
    allow_train_mode : bool
        Skip the check (you accept random / batch-dependent products).

    Raises
    ------
    ValueError
        Naming the offending submodules and the fix.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    >>> check_eval_mode(net.eval())
    """
    if allow_train_mode:
        return
    bad = [
        (name or "<root>", type(m).__name__)
        for name, m in model.named_modules()
        if m.training and _train_mode_matters(m)
    ]
    if bad:
        listed = ", ".join(f"{n} ({t})" for n, t in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"Expected a model in eval mode; got train mode with {listed}{more}. In train mode "
            "dropout makes products random and batch norm makes them depend on the batch (and "
            "updates running statistics). Call model.eval(), or pass allow_train_mode=True to "
            "accept this."
        )


@contextlib.contextmanager
def differentiable_attention() -> Iterator[None]:
    """Attention kernels with every derivative: SDPA's math backend, no MHA fast path.

    Under ``torch.func`` transforms ``nn.MultiheadAttention`` in eval mode sees inputs that
    do not require grad and takes ``torch._native_multi_head_attention``, which has no
    forward-mode derivative; the flash/efficient SDPA kernels have no double backward.
    """
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fast)


def call_model(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    inputs: Any,
    *,
    buffers: Mapping[str, torch.Tensor] | None = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    math_attention: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Evaluate ``model`` functionally at ``params`` and return its output tensor.

    Parameters
    ----------
    model : torch.nn.Module
    params : dict[str, torch.Tensor]
        Values for (a subset of) the parameters, keyed by canonical name. Parameters not
        given are passed as constants (their current values, detached).
    inputs : Tensor, tuple/list or dict
        Tensor: ``model(x)``; tuple/list: ``model(*x)``; dict: ``model(**x)``.
    buffers : dict[str, torch.Tensor], optional
        Buffer values; default the model's own ``named_buffers()``, unchanged.
    output_key : str or int, optional
        For a model returning a dict, tuple or HF-style object: ``out[key]`` (or
        ``getattr(out, key)``). Default for a Hugging Face ``ModelOutput`` (an output with a
        ``logits`` attribute): its ``logits``.
    outputs_fn : callable, optional
        ``outputs_fn(out) -> Tensor``, applied to the raw output (instead of ``output_key``).
    math_attention : bool
        Run ``scaled_dot_product_attention`` (``nn.MultiheadAttention``,
        ``nn.TransformerEncoderLayer``, HF attention) with its math backend and without
        ``nn.MultiheadAttention``'s inference fast path: the fused CPU/CUDA kernels have
        neither forward-mode (``jvp``) nor double-backward derivatives.
    extra : dict, optional
        More keyword arguments of the call (e.g. ``labels=`` for the model's own loss).

    Returns
    -------
    torch.Tensor

    Raises
    ------
    TypeError
        If the output is not a tensor and neither ``output_key`` nor ``outputs_fn`` selects
        one.

    Examples
    --------
    >>> net = nn.Linear(3, 2)
    >>> p = {"weight": torch.zeros(2, 3)}
    >>> call_model(net, p, torch.ones(1, 3)).shape
    torch.Size([1, 2])
    """
    full = {name: p.detach() for name, p in model.named_parameters()}
    full.update(params)
    if buffers is None:
        buffers = dict(model.named_buffers())
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}
    kwargs.update(extra or {})
    with differentiable_attention() if math_attention else contextlib.nullcontext():
        out = torch.func.functional_call(model, (full, dict(buffers)), args, kwargs)
    return select_output(out, output_key=output_key, outputs_fn=outputs_fn)


def select_output(
    out: Any,
    *,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pick the output tensor from a raw model output (see :func:`call_model`)."""
    if outputs_fn is not None:
        out = outputs_fn(out)
        what = "outputs_fn(out)"
    elif output_key is not None:
        if (
            isinstance(output_key, str)
            and hasattr(out, output_key)
            and not isinstance(out, Mapping)
        ):
            out = getattr(out, output_key)
        else:
            try:
                out = out[output_key]
            except (KeyError, IndexError, TypeError) as err:
                keys = list(out.keys()) if hasattr(out, "keys") else None
                raise ValueError(
                    f"Expected output_key={output_key!r} to select a model output; got a "
                    f"{type(out).__name__} without it" + (f" (keys: {keys})." if keys else ".")
                ) from err
        what = f"output[{output_key!r}]"
    elif not isinstance(out, torch.Tensor) and torch.is_tensor(getattr(out, "logits", None)):
        out = out.logits  # a Hugging Face ModelOutput: its logits
        what = "output.logits"
    else:
        what = "the model output"
    if not isinstance(out, torch.Tensor):
        hint = ""
        if isinstance(out, Mapping) or hasattr(out, "keys"):
            hint = f" with keys {list(out.keys())}"
        raise TypeError(
            f"Expected {what} to be a torch.Tensor; got {type(out).__name__}{hint}. Pass "
            "output_key= (e.g. output_key='logits') or outputs_fn=lambda out: ... to pick "
            "the tensor."
        )
    return out


# -- data ---------------------------------------------------------------------------------------


#: The key of the targets in a dict batch (the Hugging Face convention).
LABELS = "labels"


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one batch rather than an iterable of batches.

    One batch is an ``(inputs, targets)`` pair (a tuple or list of length 2 whose first
    element is a Tensor or a dict and whose second is not a dict), or a dict of tensors (a
    Hugging Face batch, a ``BatchEncoding``: the model's keyword arguments, its targets under
    ``"labels"`` if any). Anything else is an iterable of batches: two dict batches in a list
    are two batches. One batch with tuple inputs (``model(*inputs)``) or with dict targets is
    ambiguous: wrap it in a list, ``[((x1, x2), y)]``.
    """
    if isinstance(data, Mapping):
        return True
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], (torch.Tensor, Mapping))
        and not isinstance(data[1], Mapping)
    )


def split_batch(batch: Any, index: int) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch: a pair as it is, a dict split at ``"labels"``.

    Raises
    ------
    ValueError
        A batch that is neither a pair nor a dict, naming batch ``index``.
    """
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != LABELS}
        if not inputs:
            raise ValueError(f"Expected a dict batch with model inputs besides 'labels'; got "
                             f"only {list(batch)} in batch {index}.")
        return inputs, batch.get(LABELS)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"Expected each batch to be an (inputs, targets) pair or a dict of model inputs (with "
        f"'labels' as targets); got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + f" in batch {index}. Wrap one batch with tuple inputs as [((x1, x2), y)]."
    )


def _first_tensor(tree: Any) -> torch.Tensor | None:
    if isinstance(tree, torch.Tensor):
        return tree
    if isinstance(tree, Mapping):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        for leaf in tree:
            t = _first_tensor(leaf)
            if t is not None:
                return t
    return None


def tensor_leaves(tree: Any) -> Iterator[torch.Tensor]:
    """Yield the tensor leaves of a tensor / tuple / list / dict tree, in order."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for leaf in tree.values():
            yield from tensor_leaves(leaf)
    elif isinstance(tree, (tuple, list)):
        for leaf in tree:
            yield from tensor_leaves(leaf)


def batch_size(inputs: Any) -> int:
    """Number of samples in ``inputs``: the leading dimension of its first tensor leaf.

    Examples
    --------
    >>> batch_size({"ids": torch.zeros(5, 7, dtype=torch.long)})
    5
    """
    t = _first_tensor(inputs)
    if t is None or t.ndim == 0:
        raise ValueError(
            "Expected inputs containing a tensor with a leading batch dimension; got "
            f"{type(inputs).__name__} without one."
        )
    return int(t.shape[0])


def check_batch(inputs: Any, targets: Any, index: int, dtype: torch.dtype | None = None) -> int:
    """Validate one batch and return its number of samples.

    Checks that the batch is non-empty, that targets (if they hold a tensor) have the same
    leading dimension as inputs, and, when ``dtype`` is given, that floating-point leaves of
    inputs and targets have that dtype (integer leaves such as token ids are fine).

    Raises
    ------
    ValueError
        On an empty batch or inconsistent batch sizes, naming batch ``index``.
    TypeError
        On a floating dtype that differs from ``dtype``.
    """
    n = batch_size(inputs)
    if n == 0:
        raise ValueError(f"Expected non-empty batches; got 0 samples in batch {index}.")
    t = _first_tensor(targets)
    if t is not None and t.ndim > 0 and t.shape[0] != n:
        raise ValueError(
            f"Expected targets with the inputs' batch size {n}; got leading dimension "
            f"{t.shape[0]} in batch {index}. Check that inputs and targets are paired."
        )
    if dtype is not None:
        for role, tree in (("inputs", inputs), ("targets", targets)):
            for leaf in tensor_leaves(tree):
                if leaf.is_floating_point() and leaf.dtype != dtype:
                    raise TypeError(
                        f"Expected floating-point {role} of the parameters' dtype {dtype}; got "
                        f"{leaf.dtype} in batch {index}. Cast the data with .to({dtype}) or "
                        f"the model with model.to({leaf.dtype})."
                    )
    return n


def check_loader(data: Any) -> None:
    """Refuse a ``DataLoader`` whose batches change between passes (a random sampler).

    Operators walk the data once per product and weigh batch ``b`` by what the first pass
    counted in it; a shuffling loader (with ``drop_last=True``: another subset every pass)
    would make every product that of another loss.

    Examples
    --------
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.zeros(8, 2), torch.zeros(8))
    >>> check_loader(DataLoader(ds, batch_size=4))  # sequential: fine
    >>> check_loader(DataLoader(ds, batch_size=4, shuffle=True))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected a DataLoader that yields the same batches on every pass; ...
    """
    from torch.utils.data import DistributedSampler, SequentialSampler

    sampler = loader_sampler(data)
    if sampler is None:
        return
    # A DistributedSampler draws its order from (seed, epoch): the same on every pass. Its
    # shards are checked against the process group by hessntk.distributed.check_sampler.
    if isinstance(sampler, (SequentialSampler, DistributedSampler)):
        return
    name = type(sampler).__name__
    what = f"a {name}" + (" (shuffle=True)" if name == "RandomSampler" else "")
    if data.drop_last:
        what += " and drop_last=True (another subset of the data on every pass)"
    raise ValueError(
        f"Expected a DataLoader that yields the same batches on every pass; got one with "
        f"{what}. Operators walk the data once per product, so every product would be of "
        "other batches. Pass DataLoader(dataset, batch_size=..., shuffle=False): the "
        "full-data mean loss does not depend on the order."
    )


def loader_sampler(data: Any) -> Any:
    """The sampler a ``DataLoader`` draws its batches from (None for other data)."""
    from torch.utils.data import DataLoader

    if not isinstance(data, DataLoader):
        return None
    return data.batch_sampler.sampler if data.batch_sampler is not None else data.sampler


def iter_batches(data: Any, *, reiterable: bool = False) -> Iterator[tuple[Any, Any]]:
    """Yield ``(inputs, targets)`` pairs from one batch or an iterable of batches.

    Parameters
    ----------
    data : batch or iterable of batches
        One batch (see :func:`is_single_batch`) or any iterable of batches, e.g. a
        ``DataLoader`` (with a collator that makes dict batches) or a list. A batch is an
        ``(inputs, targets)`` pair or a dict of model inputs whose ``"labels"``, if any, are
        the targets (None without them).
    reiterable : bool
        Refuse a one-shot iterator (a generator): curvature operators walk the data once
        per product.

    Raises
    ------
    ValueError
        If ``data`` holds no batch or a batch is neither a pair nor a dict.
    TypeError
        If ``data`` is not iterable, or is a one-shot iterator while ``reiterable=True``.

    Examples
    --------
    >>> x, y = torch.zeros(4, 3), torch.zeros(4)
    >>> len(list(iter_batches((x, y)))), len(list(iter_batches([(x, y), (x, y)])))
    (1, 2)
    >>> inputs, targets = next(iter_batches({"input_ids": x.long(), "labels": y.long()}))
    >>> list(inputs), targets.shape
    (['input_ids'], torch.Size([4]))
    """
    if is_single_batch(data):
        yield split_batch(data, 0)
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "Expected data as one (inputs, targets) batch, a dict batch or an iterable of "
            f"batches; got {type(data).__name__}. Pass (x, y), a list of (x, y) or a DataLoader."
        )
    if reiterable and iter(data) is data:
        raise TypeError(
            f"Expected re-iterable data (a list or DataLoader); got a one-shot "
            f"{type(data).__name__}. Operators walk the data once per product: pass "
            "list(data)."
        )
    if reiterable:
        check_loader(data)
    count = 0
    for i, batch in enumerate(data):
        count += 1
        yield split_batch(batch, i)
    if count == 0:
        raise ValueError(
            "Expected at least one (inputs, targets) batch; got empty data. Check the dataset "
            "or DataLoader (drop_last=True with fewer samples than batch_size gives none)."
        )


def concat_inputs(inputs: Sequence[Any]) -> Any:
    """Concatenate input batches (tensors, tuples or dicts of tensors) along dim 0."""
    first = inputs[0]
    if len(inputs) == 1:
        return first
    if torch.is_tensor(first):
        return torch.cat(list(inputs))
    if isinstance(first, Mapping):
        return {k: concat_inputs([b[k] for b in inputs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat_inputs([b[i] for b in inputs]) for i in range(len(first)))
    raise TypeError(f"Expected tensor, tuple or dict inputs; got {type(first).__name__}.")


def to_device(tree: Any, device: torch.device) -> Any:
    """Move every tensor leaf of a tensor / tuple / list / dict tree to ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device) if tree.device != device else tree
    if isinstance(tree, Mapping):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def as_flat(
    theta: Any, layout: ParamLayout, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``theta`` (torch or numpy) as a flat tensor of the layout's size, dtype and device."""
    if isinstance(theta, np.ndarray):
        theta = torch.from_numpy(theta)
    if not torch.is_tensor(theta) or tuple(theta.shape) != (layout.n,):
        raise ValueError(f"Expected flat parameters of shape ({layout.n},); got "
                         f"{tuple(getattr(theta, 'shape', ()))} ({type(theta).__name__}).")
    return theta.detach().to(dtype=dtype, device=device)


def ravel_params(layout: ParamLayout, params: Any, device: torch.device) -> torch.Tensor:
    """Flatten a dict of tensors by name (extra entries ignored) or a module's parameters."""
    if isinstance(params, nn.Module):
        params = dict(params.named_parameters())
    if not isinstance(params, Mapping):
        raise TypeError(f"Expected parameters as a dict name -> tensor or a Module; got "
                        f"{type(params).__name__}.")
    missing = [n for n in layout.names if n not in params]
    if missing:
        raise ValueError(f"Expected values for the parameters {layout.names}; missing {missing}.")
    values = {n: torch.as_tensor(params[n]).detach().to(device=device, dtype=layout.dtype)
              for n in layout.names}
    return layout.flatten(values)


class ParamWatch:
    """Notice in-place updates of a model's parameters after an operator was built.

    Operators keep the values (and losses, batch counts, cached graphs) of the parameters at
    construction; an ``optimizer.step()`` or ``load_state_dict`` afterwards would silently
    mix new weights with old bookkeeping. Every in-place change bumps a tensor's version
    counter, which this compares (and that the parameter objects are still the model's).

    Examples
    --------
    >>> net = nn.Linear(2, 1)
    >>> watch = ParamWatch(net, dict(net.named_parameters()), "HessianOperator")
    >>> watch.check()
    >>> with torch.no_grad():
    ...     _ = net.weight.mul_(2)
    >>> watch.check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: Expected the parameters this HessianOperator was built with; 'weight' ...
    """

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor], what: str) -> None:
        self.model, self.params, self.what = model, dict(params), what
        self.versions = {k: p._version for k, p in self.params.items()}

    def check(self) -> None:
        current = dict(self.model.named_parameters(remove_duplicate=False))
        for name, p in self.params.items():
            if p._version != self.versions[name]:
                why = "was updated in place (optimizer.step(), load_state_dict, copy_)"
            elif name in current and current[name] is not p:
                why = "was replaced by another tensor"
            else:
                continue
            raise RuntimeError(
                f"Expected the parameters this {self.what} was built with; {name!r} {why} "
                "since. Its loss, batch weights and cached graphs describe the old values: "
                f"build a new {self.what} after changing the model."
            )


def describe(tree: Any, of: Callable[[torch.Tensor], str]) -> str:
    """``of`` every tensor of a tree, for messages: ``{input_ids: int64}``."""
    if isinstance(tree, torch.Tensor):
        return of(tree)
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v, of)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        return "(" + ", ".join(describe(v, of) for v in tree) + ")"
    return type(tree).__name__


def dtypes(tree: Any) -> str:
    """The dtypes of a tree of tensors, for messages: ``{input_ids: int64}``."""
    return describe(tree, lambda t: str(t.dtype).replace("torch.", ""))


def forward_error(err: Exception, what: str, inputs: Any, targets: Any = None) -> Exception:
    """torch's raw error of a forward or loss (a shape mismatch, a class index out of range)
    with what failed and the shapes it was given, as the same exception type.

    Examples
    --------
    >>> err = forward_error(RuntimeError("shapes differ"), "batch 0", torch.ones(2, 3))
    >>> str(err).split(". ")[1]
    'Check that the inputs (2, 3) are what the model and its loss take.'
    """
    shown = f"inputs {describe(inputs, lambda t: str(tuple(t.shape)))}"
    if targets is not None:
        shown += f" and targets {describe(targets, lambda t: str(tuple(t.shape)))}"
    message = (f"Evaluating the loss of {what} failed: {str(err).rstrip('.')}. Check that "
               f"the {shown} are what the model and its loss take.")
    try:
        return type(err)(message)
    except TypeError:  # an exception type that takes other arguments
        return RuntimeError(message)


def dtype_error(err: RuntimeError, what: str, inputs: Any, dtype: torch.dtype,
                targets: Any = None) -> TypeError | None:
    """A clear error for torch's raw dtype mismatch on ``what``, or None for other errors."""
    if "type" not in str(err):
        return None
    shown = f"inputs of dtype {dtypes(inputs)}"
    if targets is not None:
        shown += f" and targets of dtype {dtypes(targets)}"
    fix = (f"Cast the inputs, e.g. x.to({dtype}) for a model without an embedding (integer "
           "ids stay integers)")
    if targets is not None:
        fix += ", or the targets (class indices: torch.long; regression: the parameters' dtype)"
    return TypeError(
        f"Expected data the model accepts; got a dtype error on {what} with {shown} "
        f"(parameters: {dtype}): {err}. {fix}."
    )


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` naming ``what`` if ``tensor`` has a NaN or infinity.

    Examples
    --------
    >>> check_finite(torch.ones(2), "loss of batch 0")
    """
    # A sum first (one read, no mask); the elementwise check only when the sum is not finite
    # (a NaN or infinity, or finite values whose sum overflows).
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        bad = tensor.detach().reshape(-1)
        n_bad = int((~torch.isfinite(bad)).sum())
        raise FloatingPointError(
            f"Expected finite values in {what}; got {n_bad} non-finite of {bad.numel()} "
            f"(e.g. {bad[~torch.isfinite(bad)][0].item()}). Check the data and the loss "
            "(e.g. log of 0), or the model's parameters."
        )


def _is_scalar(x: torch.Tensor) -> bool:
    return x.ndim == 0 or math.prod(x.shape) == 1

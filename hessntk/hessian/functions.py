"""One-call spectra of a model's loss curvature: thin wrappers over the operators.

Each function takes a curvature operator (any backend) or builds a
:class:`~hessntk.hessian.HessianOperator` (or, with ``curvature="ggn"``, a
:class:`~hessntk.hessian.GGNOperator`) from a model, and hands it to the spectral core
(:mod:`hessntk.spectral.eigen`, :func:`~hessntk.spectral.trace`,
:mod:`~hessntk.spectral.quadrature`). The ``block_*`` variants return one result per parameter
block (per layer by default), as an ordered ``dict`` keyed by block name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hessntk._memory import group_room
from hessntk._model import ParamSpec
from hessntk.hessian.operators import BlockSpec, GGNOperator, HessianOperator, LossFn
from hessntk.spectral import (
    EigshResult,
    Estimate,
    LinearOperator,
    SpectralDensity,
    slq,
)
from hessntk.spectral import trace as _spectral_trace
from hessntk.spectral._backend import itemsize
from hessntk.spectral.eigen import extreme_eigenvalues
from hessntk.spectral.krylov import basis_budget
from hessntk.spectral.protocols import CurvatureLike, refuse_options
from hessntk.spectral.quadrature import block_slq

__all__ = [
    "block_density",
    "block_top_eigenvalues",
    "block_traces",
    "density",
    "top_eigenvalues",
    "trace",
]

_CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator}


def _operator(
    subject: nn.Module | LinearOperator,
    loss_fn: LossFn | None,
    data: Any,
    curvature: str,
    params: ParamSpec,
    blocks: BlockSpec | None,
    output_key: str | int | None,
    outputs_fn: Callable[[Any], torch.Tensor] | None,
    allow_train_mode: bool,
    default_blocks: str = "tensor",
    need_blocks: bool = False,
) -> LinearOperator:
    """``subject`` if it is an operator already, else the curvature operator of the model."""
    if isinstance(subject, LinearOperator):
        refuse_options({"loss_fn": loss_fn is not None, "data": data is not None,
                        "params": params is not None, "blocks": blocks is not None,
                        "output_key": output_key is not None,
                        "outputs_fn": outputs_fn is not None,
                        "curvature": curvature != "hessian",
                        "allow_train_mode": bool(allow_train_mode)},
                       "With an operator pass the other arguments by keyword (k=...).")
        if need_blocks and not isinstance(subject, CurvatureLike):
            raise TypeError(f"Expected a curvature operator with blocks (HessianOperator, "
                            f"GGNOperator) for per-block results; got {subject!r}.")
        return subject
    if curvature not in _CURVATURES:
        raise ValueError(f"Expected curvature in {sorted(_CURVATURES)}; got {curvature!r}.")
    return _CURVATURES[curvature](
        subject,
        loss_fn,
        data,
        params=params,
        blocks=blocks or default_blocks,
        output_key=output_key,
        outputs_fn=outputs_fn,
        allow_train_mode=allow_train_mode,
    )


def _trace(op: LinearOperator, num_matvecs: int, method: str, seed: int, blocks: Any = None,
           max_memory: int | None = None):
    if num_matvecs >= op.shape[0]:
        method = "exact"  # as cheap as the budget, and without error
    return _spectral_trace(op, num_matvecs=num_matvecs, method=method, seed=seed, blocks=blocks,
                           max_memory=max_memory)


def top_eigenvalues(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    k: int = 1,
    *,
    which: str = "LA",
    curvature: str = "hessian",
    tol: float = 1e-6,
    seed: int = 0,
    max_matvecs: int | None = None,
    return_eigenvectors: bool = False,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    max_memory: int | None = None,
) -> EigshResult:
    """Compute the ``k`` extreme eigenvalues of the loss Hessian (or GGN).

    Parameters
    ----------
    model, loss_fn, data
        A curvature operator (any backend; the other operator options must then be left
        out), or a model with its loss and data as for
        :class:`~hessntk.hessian.HessianOperator`.
    k : int
        Number of eigenvalues. ``k >= n`` gives all of them (dense, ``n`` products).
    which : {"LA", "SA", "LM"}
        Largest algebraic (default), smallest algebraic or largest magnitude.
    curvature : {"hessian", "ggn"}
    tol, seed, max_matvecs, return_eigenvectors, max_memory
        Passed to :func:`hessntk.spectral.eigsh`. Eigenvectors are flat, shape ``(n, k)``;
        ``HessianOperator(...).unravel(vecs, dim=0)`` shapes them like the parameters.
    params, output_key, outputs_fn, allow_train_mode
        Operator options (see :class:`~hessntk.hessian.HessianOperator`).

    Returns
    -------
    hessntk.spectral.EigshResult
        ``eigenvalues`` of shape ``(k,)`` (descending for ``"LA"``), ``num_matvecs``,
        ``converged``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> res = top_eigenvalues(net, torch.nn.CrossEntropyLoss(), (x, y), k=3)
    >>> res.eigenvalues.shape
    (3,)
    """
    if isinstance(model, LinearOperator) and isinstance(loss_fn, int) and data is None:
        k, loss_fn = loss_fn, None  # top_eigenvalues(op, 3)
    op = _operator(
        model, loss_fn, data, curvature, params, None, output_key, outputs_fn,
        allow_train_mode,
    )  # fmt: skip
    return extreme_eigenvalues(op, k, which=which, tol=tol, seed=seed, max_matvecs=max_matvecs,
                              return_eigenvectors=return_eigenvectors, max_memory=max_memory)


def trace(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    *,
    num_matvecs: int = 100,
    method: str = "xtrace",
    curvature: str = "hessian",
    seed: int = 0,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    max_memory: int | None = None,
) -> Estimate:
    """Estimate the trace of the loss Hessian (or GGN) from ``num_matvecs`` products.

    Parameters
    ----------
    model, loss_fn, data
        A curvature operator (any backend; the other operator options must then be left
        out), or a model with its loss and data as for
        :class:`~hessntk.hessian.HessianOperator`.
    num_matvecs : int
        Product budget; ``>= n`` computes the exact trace with ``n`` products.
    method : {"xtrace", "xnystrace", "hutchpp", "hutchinson"}
        Estimator of :func:`hessntk.spectral.trace` (``"xnystrace"`` needs a PSD operator:
        use it with ``curvature="ggn"``).
    curvature : {"hessian", "ggn"}
    seed : int
    params, output_key, outputs_fn, allow_train_mode
        Operator options.
    max_memory : int, optional
        Bytes the estimator's vectors may take at once (:func:`hessntk.spectral.trace`;
        default a quarter of the free memory): "hutchinson" fits its probes to it, the
        others are refused with the fixes when they do not fit.

    Returns
    -------
    hessntk.spectral.Estimate
        ``value``, ``stderr``, ``num_matvecs``, ``method``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(4, 1)
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> est = trace(net, torch.nn.MSELoss(), (x, y), num_matvecs=5)  # n = 5: exact
    >>> round(est.value, 4) == round(float(2 * (x.square().sum() / 32 + 1)), 4)
    True
    """
    op = _operator(
        model, loss_fn, data, curvature, params, None, output_key, outputs_fn,
        allow_train_mode,
    )  # fmt: skip
    return _trace(op, num_matvecs, method, seed, max_memory=max_memory)


def density(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    *,
    num_probes: int = 10,
    num_matvecs: int = 100,
    curvature: str = "hessian",
    seed: int = 0,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    reorth: str = "partial",
    basis_dtype: str = "operator",
    max_basis_bytes: int | None = None,
) -> SpectralDensity:
    """Estimate the spectral density of the loss Hessian (or GGN) by SLQ.

    All probes advance together: each Lanczos step is one ``matmat`` of ``num_probes``
    vectors.

    Parameters
    ----------
    model, loss_fn, data
        A curvature operator (any backend; the other operator options must then be left
        out), or a model with its loss and data as for
        :class:`~hessntk.hessian.HessianOperator`.
    num_probes : int
        Rademacher probes (independent quadrature rules).
    num_matvecs : int
        Lanczos steps per probe (capped at ``n``).
    curvature : {"hessian", "ggn"}
    seed : int
    params, output_key, outputs_fn, allow_train_mode
        Operator options.
    reorth : {"partial", "full", "none"}
        Lanczos reorthogonalisation (see :func:`hessntk.spectral.slq`): "none" for models
        whose ``s n m`` bytes of basis per probe (``s`` bytes per entry) do not fit.
    basis_dtype : {"operator", "float64"}
        The stored Lanczos vectors in the model's dtype (default; half the memory of float64
        for float32) or in float64.
    max_basis_bytes : int, optional
        Memory allowed for the bases of the probes advancing together (default as
        :func:`hessntk.spectral.slq`'s): probes beyond it run in successive groups.

    Returns
    -------
    hessntk.spectral.SpectralDensity
        With ``.density(x, sigma)``, ``.cdf(x)``, ``.trace(f)``, ``.logdet()``, ``.plot()``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> d = density(net, torch.nn.MSELoss(), (x, y), num_probes=2, num_matvecs=20)
    >>> d.nodes.shape
    (2, 20)
    """
    op = _operator(
        model, loss_fn, data, curvature, params, None, output_key, outputs_fn,
        allow_train_mode,
    )  # fmt: skip
    return slq(op, num_probes=num_probes, num_matvecs=min(num_matvecs, op.shape[0]), seed=seed,
               reorth=reorth, basis_dtype=basis_dtype, max_basis_bytes=max_basis_bytes)


def block_top_eigenvalues(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    k: int = 1,
    *,
    blocks: BlockSpec | None = None,
    which: str = "LA",
    curvature: str = "hessian",
    tol: float = 1e-6,
    seed: int = 0,
    max_matvecs: int | None = None,
    return_eigenvectors: bool = False,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    max_memory: int | None = None,
) -> dict[str, EigshResult]:
    """Compute the ``k`` extreme eigenvalues of every diagonal block ``H_bb``.

    Each block's restricted operator (the other parameters held fixed) is solved on its own;
    a block with at most ``k`` entries gets all its eigenvalues (dense).

    Parameters
    ----------
    blocks : {"layer", "tensor"} or dict
        Per owning module (default), per parameter tensor, or ``name -> parameter names``.
    Others
        As for :func:`top_eigenvalues`.

    Returns
    -------
    dict[str, hessntk.spectral.EigshResult]
        Keyed by block name, in parameter order.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> res = block_top_eigenvalues(net, torch.nn.CrossEntropyLoss(), (x, y), k=2)
    >>> list(res)
    ['0', '2']
    """
    if isinstance(model, LinearOperator) and isinstance(loss_fn, int) and data is None:
        k, loss_fn = loss_fn, None  # block_top_eigenvalues(op, 2)
    op = _operator(
        model, loss_fn, data, curvature, params, blocks, output_key, outputs_fn,
        allow_train_mode, default_blocks="layer", need_blocks=True,
    )  # fmt: skip
    return {
        name: extreme_eigenvalues(op.block(name), k, which=which, tol=tol, seed=seed,
                                  max_matvecs=max_matvecs,
                                  return_eigenvectors=return_eigenvectors,
                                  max_memory=max_memory)
        for name in op.blocks
    }


def block_traces(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    *,
    blocks: BlockSpec | None = None,
    num_matvecs: int = 100,
    method: str = "xtrace",
    curvature: str = "hessian",
    seed: int = 0,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    max_memory: int | None = None,
) -> dict[str, Estimate]:
    """Estimate the trace of every diagonal block ``H_bb`` in one pass.

    All blocks share the same ``num_matvecs`` products of the full operator
    (:func:`hessntk.spectral.trace` with ``blocks=``), so the cost does not grow with the
    number of blocks.

    Parameters
    ----------
    blocks : {"layer", "tensor"} or dict
        Per owning module (default), per parameter tensor, or ``name -> parameter names``.
    Others
        As for :func:`trace`.

    Returns
    -------
    dict[str, hessntk.spectral.Estimate]
        Keyed by block name; every estimate reports the shared ``num_matvecs``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> tr = block_traces(net, torch.nn.MSELoss(), (x, y), num_matvecs=20)
    >>> sorted(tr)
    ['0', '2']
    """
    op = _operator(
        model, loss_fn, data, curvature, params, blocks, output_key, outputs_fn,
        allow_train_mode, default_blocks="layer", need_blocks=True,
    )  # fmt: skip
    res = _trace(op, num_matvecs, method, seed, blocks=op.block_slices, max_memory=max_memory)
    return {name: res[i] for i, name in enumerate(op.blocks)}


def block_density(
    model: nn.Module | LinearOperator,
    loss_fn: LossFn | None = None,
    data: Any = None,
    *,
    blocks: BlockSpec | None = None,
    num_probes: int = 10,
    num_matvecs: int = 100,
    curvature: str = "hessian",
    seed: int = 0,
    params: ParamSpec = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    max_basis_bytes: int | None = None,
) -> dict[str, SpectralDensity]:
    """Estimate the spectral density of every diagonal block ``H_bb`` by SLQ.

    ``num_probes`` probes of each block's size, ``num_matvecs`` steps capped at the block's
    size (where SLQ is exact). All blocks advance in one lockstep pass
    (:func:`hessntk.spectral.block_slq`: each step one product of the full operator) when
    its basis, ``s n m num_probes num_blocks`` bytes (``s`` bytes per entry of the model's
    dtype), fits ``max_basis_bytes``;
    otherwise each block runs on its own restricted operator. The numbers agree to rounding.

    Parameters
    ----------
    blocks : {"layer", "tensor"} or dict
        Per owning module (default), per parameter tensor, or ``name -> parameter names``.
    num_probes, num_matvecs, curvature, seed
        As for :func:`density`, per block.
    params, output_key, outputs_fn, allow_train_mode
        Operator options.
    max_basis_bytes : int, optional
        Memory allowed for the lockstep pass's basis, and for each block's own SLQ otherwise
        (:func:`hessntk.spectral.slq`: probes in groups that fit). Default: the lockstep
        pass where its basis fits ``hessntk._memory.DEFAULT_GROUP_BYTES`` (2 GiB) and a
        quarter of the free memory, a fixed rule as :func:`hessntk.spectral.slq`'s groups.

    Returns
    -------
    dict[str, hessntk.spectral.SpectralDensity]
        Keyed by block name.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> ds = block_density(net, torch.nn.MSELoss(), (x, y), num_probes=2, num_matvecs=10)
    >>> ds["2"].nodes.shape  # the last layer has 9 parameters
    (2, 9)
    """
    op = _operator(
        model, loss_fn, data, curvature, params, blocks, output_key, outputs_fn,
        allow_train_mode, default_blocks="layer", need_blocks=True,
    )  # fmt: skip
    n, B = op.shape[0], len(op.blocks)
    room = group_room(max_basis_bytes, basis_budget(op, None, max_basis_bytes)[0])
    if itemsize(op.dtype) * n * min(num_matvecs, n) * num_probes * B <= room:
        # One lockstep pass for all blocks: each step one product of the full operator (the
        # budget it was chosen by, not a second reading of the free memory).
        dens = block_slq(op, op.block_slices, num_probes=num_probes, num_matvecs=num_matvecs,
                         seed=seed, max_basis_bytes=room)
        return dict(zip(op.blocks, dens, strict=True))
    out = {}
    for name in op.blocks:  # a pass per block, on the block's own (smaller) operator
        sub = op.block(name)
        m = min(num_matvecs, sub.shape[0])
        out[name] = slq(sub, num_probes=num_probes, num_matvecs=m, seed=seed,
                        max_basis_bytes=max_basis_bytes)
    return out

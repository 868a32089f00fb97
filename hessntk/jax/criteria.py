"""The criteria for JAX functions: operator builders in front of :mod:`hessntk.criteria`.

Each function here builds the JAX operators (:class:`~hessntk.jax.GramOperator`,
:class:`~hessntk.jax.RegulariserOperator`, the layer-blocked
:class:`~hessntk.jax.HessianOperator`) from ``f(params, x)`` / ``loss_fn(params, batch)`` and a
params pytree, then calls the one implementation of the criterion in :mod:`hessntk.criteria`:
the same options, results and numbers as the torch entry points, with nothing of torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from hessntk import criteria
from hessntk._observations import IIC_OBSERVATIONS
from hessntk._progress import progress
from hessntk.criteria.bits import BitAllocation
from hessntk.criteria.comparison import Comparison, rank_results
from hessntk.criteria.iic import IICResult
from hessntk.criteria.quantization_results import QuantizationMeasurement, QuantizationSensitivity
from hessntk.criteria.quantizers import GROUP_SIZE
from hessntk.jax._common import check_pairs
from hessntk.jax.layers import Layers, layer_operator
from hessntk.jax.ntk import GramOperator
from hessntk.jax.regulariser import RegulariserOperator

__all__ = ["compare", "iic", "measure_quantization", "mixed_precision",
           "quantization_sensitivity", "quantized_loss"]


def iic(
    f: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    prior: Any = "init",
    reference: Any = None,
    observations: str = "outputs",
    **options: Any,
) -> IICResult:
    """Compute the Interpolating Information Criterion of a trained JAX model.

    Builds ``GramOperator(f, params, data=data, prior=prior, outputs=...)`` (and a
    :class:`~hessntk.jax.RegulariserOperator` for a callable prior) and calls
    :func:`hessntk.criteria.iic`: ``IIC = log(R* - R0) + (1/N) log det K_H + (1/N)(log det
    H* - log det H0) - log N``, lower is better.

    Parameters
    ----------
    f : callable
        ``f(params, x) -> outputs``, per-sample outputs ``(n, ...)``.
    params : pytree of floating arrays
        The trained parameters ``theta*``.
    data : (inputs, targets) or list of such pairs
        The training data that the model interpolates (targets: regression values, or
        integer class indices).
    prior : "init", float, pytree or callable
        Gaussian prior covariance ``S`` (diagonal): ``"init"`` (``2 / fan_in`` for weights
        stored ``(out, in)``, 1 for biases), a float variance, or a pytree of variances with
        the parameters' structure. A callable ``R(params) -> scalar`` is a general
        regulariser; then ``reference`` must be its minimiser.
    reference : pytree, flat array or None
        The prior mean ``m`` (e.g. the initialisation; default zero), or for a callable prior
        the minimiser ``theta0`` of ``R``.
    observations : {"outputs", "logits", "probabilities"}
    **options
        ``method``, ``soft``, ``seed``, ``num_probes``, ``num_matvecs``,
        ``interpolation_tol``, ``convention`` (``"B"`` or ``"A"``): as in
        :func:`hessntk.criteria.iic`.

    Returns
    -------
    hessntk.criteria.IICResult

    Raises
    ------
    ValueError
        Unknown options, data that are not (inputs, targets) pairs, a callable prior without
        ``reference``, a ``reference`` that does not match ``params``, or
        ``jax_enable_x64`` off (the criterion's float64 bookkeeping needs it, also for float32
        parameters).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.PRNGKey(0), (4, 10))
    >>> Y = jax.random.normal(jax.random.PRNGKey(1), (4, 1))
    >>> f = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.linalg.pinv(X) @ Y}  # the minimum-norm interpolator
    >>> res = iic(f, params, (X, Y), prior=1.0, method="slq", num_probes=4, num_matvecs=4)
    >>> res.num_constraints, res.method, res.valid
    (4, 'slq', True)
    """
    if observations not in IIC_OBSERVATIONS:
        raise ValueError(f"Expected observations in {tuple(IIC_OBSERVATIONS)}; got "
                         f"{observations!r}.")
    pairs = check_pairs(data, "data")
    general = callable(prior) and not isinstance(prior, str)
    if general and reference is None:
        raise ValueError("Expected reference= the minimiser theta0 of the callable prior R "
                         "(a params pytree holding theta0).")
    K = GramOperator(f, params, data=pairs, prior=None if general else prior,
                     outputs=IIC_OBSERVATIONS[observations])
    regulariser = RegulariserOperator(prior, K.layout.tree) if general else "init"
    return criteria.iic(K, prior=regulariser, reference=reference, **options)


def compare(
    checkpoints: Sequence[Any] | Mapping[str, Any],
    f: Callable[[Any, Any], jax.Array],
    data: Any,
    **iic_kwargs: Any,
) -> Comparison:
    """Rank checkpoints (params pytrees of one function) by the IIC.

    :func:`iic` of each checkpoint, ranked as :func:`hessntk.criteria.compare` ranks them
    (:func:`hessntk.criteria.comparison.rank_results`). Every checkpoint
    is evaluated with the same ``seed`` (in ``iic_kwargs``, default 0): common random
    numbers. The compiled NTK products are shared by all checkpoints (same ``f``, same
    shapes): only the first one compiles.

    Parameters
    ----------
    checkpoints : sequence or mapping name -> params pytree
        Parameters of ``f`` with one structure and shapes (Equinox: load each with
        ``equinox.tree_deserialise_leaves(path, like)`` and pass
        ``equinox.filter(model, equinox.is_inexact_array)``).
    f : callable
        ``f(params, x) -> outputs``.
    data : (inputs, targets) or list of such pairs
        The training data.
    **iic_kwargs
        Passed to :func:`iic` (prior, method, soft, seed, ...).

    Returns
    -------
    hessntk.criteria.Comparison

    Raises
    ------
    ValueError
        No checkpoint, or a checkpoint whose structure or shapes differ from the first one
        (named).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    >>> Y = jax.random.normal(jax.random.PRNGKey(1), (3, 1))
    >>> f = lambda p, x: x @ p["w"]
    >>> w = jnp.linalg.pinv(X) @ Y
    >>> kw = dict(prior=1.0, method="slq", num_probes=2, num_matvecs=3)
    >>> table = compare({"a": {"w": w}, "b": {"w": 2 * w}}, f, (X, Y), soft=1e6, **kw)
    >>> [row["name"] for row in table.rows]  # "b" does not interpolate: ranked after "a"
    ['a', 'b']
    """
    items = (list(checkpoints.items()) if isinstance(checkpoints, Mapping)
             else [(f"checkpoint {i}", c) for i, c in enumerate(checkpoints)])
    if not items:
        raise ValueError("Expected at least one checkpoint; got none.")
    first = _signature(items[0][1])
    for name, params in items[1:]:
        if _signature(params) != first:
            raise ValueError(f"Checkpoint {name!r} does not match the structure and shapes of "
                             f"{items[0][0]!r}: got {_signature(params)} vs {first}.")
    pairs = check_pairs(data, "data")
    return rank_results({str(name): iic(f, params, pairs, **iic_kwargs)
                         for name, params in progress(items, "checkpoints")})


def quantization_sensitivity(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    f: Callable[[Any, Any], Any] | None = None,
    **options: Any,
) -> QuantizationSensitivity:
    """Predict the loss increase of quantizing each layer of a params pytree alone.

    :func:`hessntk.criteria.quantization_sensitivity` on
    :func:`~hessntk.jax.layer_operator` ``(loss_fn, params, data, layers=...,
    quantize_biases=..., f=...)``: the Hessian of ``loss_fn(params, batch)``, or with ``f``
    the GGN of ``loss_fn(f(params, x), y)``, one block per layer.

    Parameters
    ----------
    loss_fn, params, data
        As for :class:`hessntk.jax.HessianOperator` (or :class:`~hessntk.jax.GGNOperator`
        with ``f``).
    layers : None, str, sequence of str, or dict
        Layers by key path (see :func:`hessntk.jax.layers.resolve_layers`).
    quantize_biases : bool
    f : callable, optional
        The model, for GGN curvature.
    **options
        ``bits``, ``quantizer``, ``granularity``, ``group_size``, ``channel_axes``,
        ``metric``, ``num_matvecs``, ``seed``, ``trace_method``: as in
        :func:`hessntk.criteria.quantization_sensitivity`. ``granularity="channel"`` and
        ``"group"`` take the output channels along axis 0 (the output axis of ``(out, in)``
        weights) unless ``channel_axes`` says otherwise.

    Returns
    -------
    hessntk.criteria.QuantizationSensitivity
        ``params`` maps each layer to its leaf key paths.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    >>> params = [(jax.random.normal(k1, (8, 4)), jnp.zeros(8)),
    ...           (jax.random.normal(k2, (3, 8)), jnp.zeros(3))]
    >>> def loss(p, b):
    ...     (W1, b1), (W2, b2) = p
    ...     out = jnp.tanh(b[0] @ W1.T + b1) @ W2.T + b2
    ...     return jnp.mean((out - b[1]) ** 2)
    >>> x, y = jnp.ones((16, 4)), jnp.zeros((16, 3))

    With ``jax_enable_x64`` on (the trace estimator's float64 bookkeeping needs it):

    >>> sens = quantization_sensitivity(loss, params, (x, y), bits=(2, 8), metric="trace",
    ...                                 num_matvecs=4)  # doctest: +SKIP
    >>> sens.layers, sens.num_params.tolist(), sens.predictions("direct").shape  # doctest: +SKIP
    (('[0]', '[1]'), [32, 24], (2, 2))
    """
    if "curvature" in options:
        raise ValueError("Expected f= (the model f(params, x)) for GGN curvature, with loss_fn "
                         "the loss on its outputs; the Hessian of loss_fn(params, batch) is the "
                         f"default. Got curvature={options['curvature']!r}.")
    criteria.quantization.check_options(options.get("quantizer", "symmetric"),
                                        options.get("granularity", "tensor"),
                                        options.get("group_size", GROUP_SIZE))
    metric = options.get("metric", "both")
    if metric not in criteria.quantization.METRICS:
        raise ValueError(f"Expected metric in {criteria.quantization.METRICS}; got {metric!r}.")
    op = layer_operator(loss_fn, params, data, layers=layers, quantize_biases=quantize_biases,
                        f=f)
    return criteria.quantization_sensitivity(op, **options)


def measure_quantization(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    bits: int | Sequence[int] = (2, 3, 4, 8),
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    **options: Any,
) -> QuantizationMeasurement:
    """Quantize each layer alone and measure the full-data loss, per bit width.

    :func:`hessntk.criteria.measure_quantization` on :func:`~hessntk.jax.layer_operator`;
    ``options``: ``quantizer``, ``granularity``, ``group_size``, ``channel_axes``. The
    parameters are never modified.

    Returns
    -------
    hessntk.criteria.QuantizationMeasurement
    """
    op = layer_operator(loss_fn, params, data, layers=layers, quantize_biases=quantize_biases)
    return criteria.measure_quantization(op, bits=bits, **options)


def quantized_loss(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    assignment: Mapping[str, int] | BitAllocation,
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    **options: Any,
) -> float:
    """The full-data mean loss with several layers quantized together.

    :func:`hessntk.criteria.quantized_loss` on :func:`~hessntk.jax.layer_operator`; a
    :class:`~hessntk.criteria.BitAllocation` brings its own layer groups.

    Returns
    -------
    float
    """
    if isinstance(assignment, BitAllocation) and layers is None and assignment.params:
        layers = {k: list(v) for k, v in assignment.params.items()}
    op = layer_operator(loss_fn, params, data, layers=layers, quantize_biases=quantize_biases)
    return criteria.quantized_loss(op, assignment=assignment, **options)


def mixed_precision(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    f: Callable[[Any, Any], Any] | None = None,
    **options: Any,
) -> BitAllocation:
    """Per-layer bit widths chosen on the measured loss, never worse than uniform.

    :func:`hessntk.criteria.mixed_precision` on :func:`~hessntk.jax.layer_operator`;
    ``options``: the budget (``average_bits``, ``budget_bits`` or ``budget_bytes``),
    ``choices``, ``quantizer``, ``granularity``, ``group_size``, ``channel_axes``. The
    parameters are never modified.

    Returns
    -------
    hessntk.criteria.BitAllocation
    """
    op = layer_operator(loss_fn, params, data, layers=layers, quantize_biases=quantize_biases,
                        f=f)
    return criteria.mixed_precision(op, **options)


# -- helpers ---------------------------------------------------------------------------------


def _signature(params: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple(tuple(getattr(leaf, "shape", ())) for leaf in leaves)

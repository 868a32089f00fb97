"""JAX backend: curvature and Gram operators for functions of parameter pytrees.

The same operator protocol as the torch builders (:mod:`hessntk.spectral.protocols`), so every
criterion of :mod:`hessntk.criteria` runs on these operators unchanged:

- :class:`HessianOperator` (``loss_fn(params, batch)``), :class:`GGNOperator`
  (``f(params, inputs)`` and ``loss_fn(outputs, targets)``), with ``select=`` / ``blocks=``
  and :func:`layer_operator` (one block per layer, for quantization);
- :func:`jacobian`, :func:`gram`, :class:`GramOperator` for ``f(params, x)``;
- :class:`RegulariserOperator`: the Hessian of a regulariser ``R(params)`` (a general IIC
  prior);
- thin builders in front of the criteria: :func:`iic`, :func:`compare`,
  :func:`quantization_sensitivity`, :func:`measure_quantization`, :func:`quantized_loss`,
  :func:`mixed_precision`.

``params`` is any pytree of floating arrays (a dict, a list, or the arrays of an Equinox
model: ``params, static = equinox.partition(model, equinox.is_inexact_array)``). Operators are
:class:`hessntk.spectral.LinearOperator` s with ``backend="jax"``: ``hessntk.eigsh``,
``hessntk.slq`` and ``hessntk.trace`` run on them with jax arrays, and products are
``jax.jit`` -compiled once per function and shape. The spectral core keeps float64
bookkeeping, so enable ``jax.config.update("jax_enable_x64", True)`` (float32 parameters then
still give float32 products).

Importing :mod:`hessntk` never imports jax; importing this module needs it
(``pip install 'hessntk[jax]'``) and never needs torch.
"""

try:
    import jax  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hessntk.jax needs JAX: pip install 'hessntk[jax]' (or pip install jax equinox)."
    ) from err

from hessntk.jax.criteria import (
    compare,
    iic,
    measure_quantization,
    mixed_precision,
    quantization_sensitivity,
    quantized_loss,
)
from hessntk.jax.curvature import GGNOperator, HessianOperator, layer_name
from hessntk.jax.layers import layer_operator
from hessntk.jax.ntk import GramOperator, gram, init_variances, jacobian
from hessntk.jax.regulariser import RegulariserOperator

__all__ = [
    "GGNOperator",
    "GramOperator",
    "HessianOperator",
    "RegulariserOperator",
    "compare",
    "gram",
    "iic",
    "init_variances",
    "jacobian",
    "layer_name",
    "layer_operator",
    "measure_quantization",
    "mixed_precision",
    "quantization_sensitivity",
    "quantized_loss",
]

"""JAX backend: curvature operators, NTK and criteria for functions of parameter pytrees.

The same builders as :mod:`hessntk.hessian`, :mod:`hessntk.ntk` and :mod:`hessntk.criteria`,
for pure JAX functions instead of ``torch.nn.Module`` s:

- :class:`HessianOperator` (``loss_fn(params, batch)``), :class:`GGNOperator`
  (``f(params, inputs)`` and ``loss_fn(outputs, targets)``);
- :func:`jacobian`, :func:`gram`, :class:`GramOperator` for ``f(params, x)``;
- :func:`iic`, :func:`compare` returning :class:`hessntk.criteria.IICResult` /
  :class:`hessntk.criteria.Comparison`, and :func:`quantization_sensitivity` returning
  :class:`hessntk.criteria.QuantizationSensitivity`.

``params`` is any pytree of floating arrays (a dict, a list, or the arrays of an Equinox
model: ``params, static = equinox.partition(model, equinox.is_inexact_array)``). Operators are
:class:`hessntk.spectral.LinearOperator` s with ``backend="jax"``: ``hessntk.eigsh``,
``hessntk.slq`` and ``hessntk.trace`` run on them with jax arrays, and products are
``jax.jit`` -compiled once per function and shape. The spectral core keeps float64
bookkeeping, so enable ``jax.config.update("jax_enable_x64", True)`` (float32 parameters then
still give float32 products).

Importing :mod:`hessntk` never imports jax; importing this module needs it
(``pip install 'hessntk[jax]'``).
"""

try:
    import jax  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hessntk.jax needs JAX: pip install 'hessntk[jax]' (or pip install jax equinox)."
    ) from err

from hessntk.jax.criteria import compare, iic
from hessntk.jax.curvature import GGNOperator, HessianOperator
from hessntk.jax.ntk import GramOperator, gram, init_variances, jacobian
from hessntk.jax.quantization import quantization_sensitivity

__all__ = [
    "GGNOperator",
    "GramOperator",
    "HessianOperator",
    "compare",
    "gram",
    "iic",
    "init_variances",
    "jacobian",
    "quantization_sensitivity",
]

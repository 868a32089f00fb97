"""NTK of JAX functions: Jacobians, Gram matrices and the matrix-free Gram operator.

``K = J S J^T`` with ``J`` the ``(N, P)`` Jacobian of the ``N = n c`` stacked outputs of
``f(params, x)`` (row ``i c + j`` = output ``j`` of sample ``i``, trailing output dimensions
flattened row-major) and ``S`` a diagonal prior covariance. Same conventions as
:mod:`hessntk.ntk`, for a function of a params pytree instead of a ``torch.nn.Module``.

- :func:`jacobian`: ``J`` itself, in chunks of samples.
- :func:`gram`: explicit ``K`` (full, output-traced or per-sample blocks; cross-kernels) by
  Jacobian contraction or NTK-vector products, within a memory budget.
- :class:`GramOperator`: ``v -> K v`` by one vjp and one jvp per batch, for the spectral core
  and every criterion.
"""

from hessntk.jax.ntk._common import init_variances, observe
from hessntk.jax.ntk.grams import gram
from hessntk.jax.ntk.jacobians import jacobian
from hessntk.jax.ntk.operator import GramOperator

__all__ = ["GramOperator", "gram", "init_variances", "jacobian", "observe"]

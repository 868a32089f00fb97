"""NTK side of hessntk: Jacobians, Gram matrices and matrix-free Gram operators.

``K = J S J^T`` with ``J`` the ``(N, P)`` Jacobian of the ``N = n c`` stacked outputs (row
``i c + j`` = output ``j`` of sample ``i``) and ``S`` a diagonal prior covariance.

- :func:`jacobian`: ``J`` itself, in chunks.
- :func:`gram`: explicit ``K`` (full, output-traced or per-sample blocks; cross-kernels),
  layer-structured for Linear / HF Conv1D / Conv2d / Embedding layers, within a memory budget.
- :class:`GramOperator`: ``v -> K v`` by one vjp and one jvp per batch, for the spectral core.
- :func:`gram_diagonal`, :func:`per_sample_grad_norms`: exact ``diag(K)``.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hessntk.ntk needs PyTorch: pip install 'hessntk[torch]' (or pip install torch)."
    ) from err

from hessntk.ntk._common import simplex_basis, structural_nullity
from hessntk.ntk.grams import gram, gram_diagonal, per_sample_grad_norms
from hessntk.ntk.jacobians import jacobian
from hessntk.ntk.operator import GramOperator
from hessntk.ntk.prior import init_variances

__all__ = [
    "GramOperator",
    "gram",
    "gram_diagonal",
    "init_variances",
    "jacobian",
    "per_sample_grad_norms",
    "simplex_basis",
    "structural_nullity",
]

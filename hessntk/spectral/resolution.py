"""How small an eigenvalue of a Gram matrix can be and still be a number, by precision.

For ``K = J J^T`` accumulated in float64 from Jacobians ``J`` computed in a dtype of machine
epsilon ``eps`` (normwise relative error ``c eps``), Weyl's inequality on the singular values
of ``J`` gives ``|delta lambda_i| <= 2 c eps sqrt(lambda_i lambda_max)``: eigenvalues keep
about ``1 / (2 c eps sqrt(lambda_max / lambda_i))`` of relative accuracy, far below
``eps lambda_max``, the resolution of a Gram accumulated in ``eps``'s own dtype. Measured on a
trained CNN (tests/ntk/test_precision.py): float32 Jacobians, float64 accumulation, relative
errors <= 1e-5 down to ``1e-8 lambda_max`` for logits and <= 3e-4 down to
``1e-14 lambda_max`` for probabilities.
"""

from __future__ import annotations

import numpy as np

#: ``c`` of the error model above, with a margin: eigenvalues above the floor have at least
#: 10% relative accuracy by the bound (in the measurements, better than 1e-3).
GRAM_FLOOR_FACTOR = 20


def gram_floor(lam_max: float, eps: float) -> float:
    """Eigenvalues at or below this are rounding noise in a float64-accumulated Gram.

    Parameters
    ----------
    lam_max : float
        The largest eigenvalue.
    eps : float
        Machine epsilon of the dtype the Jacobians (or layer factors) were computed in.

    Returns
    -------
    float
        ``lam_max * max((20 eps)^2, 10 eps_64)``: the Jacobians' rounding, or float64's.

    Examples
    --------
    >>> import numpy as np
    >>> f32 = gram_floor(1.0, float(np.finfo(np.float32).eps))
    >>> f64 = gram_floor(1.0, float(np.finfo(np.float64).eps))
    >>> f"{f32:.1e}", f"{f64:.1e}"
    ('5.7e-12', '2.2e-15')
    """
    eps64 = float(np.finfo(np.float64).eps)
    return max(float(lam_max), 0.0) * max((GRAM_FLOOR_FACTOR * eps) ** 2, 10 * eps64)

"""The two operator families that the criteria consume, with one set of names for every backend.

The torch builders (:mod:`hessntk.hessian`, :mod:`hessntk.ntk`) and the JAX builders
(:mod:`hessntk.jax`) implement these protocols with the same attribute names and meanings, so
a criterion written once against them (:mod:`hessntk.criteria`) runs on either backend, and on
any other operator that implements them (a distributed one, say).

Arrays are on the operator's backend and device (``op.backend``; torch tensors or jax arrays)
unless a member says otherwise; flat vectors follow ``op.layout`` (a
:class:`~hessntk.spectral.layout.ParamLayout`).

- :class:`CurvatureLike`: the Hessian or GGN of a full-data mean loss ``L(theta)``.
- :class:`GramLike`: the prior-weighted NTK Gram ``K = J S J^T`` of a model on its data.
- :class:`RegulariserLike`: the Hessian of a regulariser ``R(theta)`` (a data-free curvature
  operator that can move to other parameters), for IIC priors that are not Gaussian.

Examples
--------
>>> import numpy as np
>>> from hessntk.spectral import aslinearoperator
>>> isinstance(aslinearoperator(np.eye(2)), GramLike)  # a plain matrix is not a Gram operator
False
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from hessntk.spectral.layout import ParamLayout

__all__ = ["CurvatureLike", "GramLike", "RegulariserLike", "refuse_options"]


@runtime_checkable
class _Parametrised(Protocol):
    """Members shared by every operator built from parameters."""

    shape: tuple[int, int]
    dtype: Any
    device: Any
    backend: str
    layout: ParamLayout

    def matmat(self, V: Any) -> Any:
        """``A V`` for ``V`` of shape ``(n, k)``."""

    def matvec(self, v: Any) -> Any:
        """``A v`` for ``v`` of shape ``(n,)``."""

    def theta(self) -> Any:
        """The parameters as one flat vector ``(P,)`` in the operator's dtype."""

    def ravel(self, params: Any) -> Any:
        """Parameters as the user holds them (a dict by name, a pytree) to a flat ``(P,)``."""

    def unravel(self, vec: Any, dim: int = -1) -> Any:
        """A flat vector (or a stack of them) back to the user's structure."""


@runtime_checkable
class CurvatureLike(_Parametrised, Protocol):
    """The Hessian (or GGN) of a full-data mean loss, with its parameter blocks.

    Attributes
    ----------
    loss : float
        ``L(theta)``, the sample-weighted mean over all the data.
    num_samples : int
    blocks : list[str]
        Names of the parameter blocks (layers, tensors, or as given).
    block_params : dict[str, list[str]]
        The layout names in each block.
    block_slices : list of slice or numpy int array
        Positions of each block in the flat vector, in :attr:`blocks` order.
    """

    loss: float
    num_samples: int
    blocks: list[str]
    block_params: dict[str, list[str]]
    block_slices: list[Any]

    def block(self, name: str) -> CurvatureLike:
        """The operator restricted to one block (the other parameters held fixed)."""

    def gradient(self) -> Any:
        """``grad L(theta)``, flat ``(P,)``."""

    def loss_at(self, theta: Any) -> float:
        """``L`` at other flat parameters ``(P,)`` (the model itself is left unchanged)."""


@runtime_checkable
class GramLike(_Parametrised, Protocol):
    """``K = J S J^T`` of ``N = n c`` stacked observed outputs (row ``i c + j``).

    Attributes
    ----------
    num_samples, num_outputs : int
        ``n`` and ``c`` (outputs per sample after the observation map).
    observation : str
        The observation map: ``"raw"``, ``"logits"``, ``"probabilities"``, ``"simplex"``
        or ``"custom"``.
    structural_nullity : int
        Zero eigenvalues forced by the observation map.
    prior_name : str
        A label of ``S`` for reports (``"init"``, ``"1"``, ``"dict"``, ...).
    """

    num_samples: int
    num_outputs: int
    observation: str
    structural_nullity: int
    prior_name: str

    def variances(self) -> Any:
        """The diagonal of ``S``, flat ``(P,)``."""

    def outputs(self) -> Any:
        """Model outputs at ``theta`` before the observation map, ``(n, ...)``."""

    def targets(self) -> Any:
        """The targets the operator was built with (stacked over batches), or None."""

    def jvp(self, tangent: Any) -> Any:
        """``J t`` for ``t`` of shape ``(P,)`` or ``(P, k)``."""

    def vjp(self, V: Any) -> Any:
        """``J^T v`` (not weighted by ``S``) for ``v`` of shape ``(N,)`` or ``(N, k)``."""

    def diagonal(self) -> Any:
        """The exact ``diag(K)``, ``(N,)``."""

    def dense(self, *, dtype: Any = None, max_memory: int | None = None,
              weighted: bool = True) -> Any:
        """The explicit ``(N, N)`` Gram (``J J^T`` with ``weighted=False``) within a budget."""

    def jacobian(self, *, dtype: Any = None, max_memory: int | None = None) -> Any:
        """The explicit ``(N, P)`` Jacobian within a memory budget."""

    def output_hessian(self, weights: Any) -> Any:
        """The ``(P, P)`` operator ``sum_i w_i hess f_i(theta)`` for weights ``(N,)``."""


@runtime_checkable
class RegulariserLike(_Parametrised, Protocol):
    """The Hessian of a regulariser ``R(theta)`` (a negative log prior) at one point.

    Attributes
    ----------
    loss : float
        ``R`` at the operator's parameters.
    """

    loss: float

    def gradient(self) -> Any:
        """``grad R(theta)``, flat ``(P,)``."""

    def loss_at(self, theta: Any) -> float:
        """``R`` at other flat parameters."""

    def at(self, theta: Any) -> RegulariserLike:
        """The same regulariser's Hessian operator at other flat parameters."""


def refuse_options(given: dict[str, bool], hint: str = "") -> None:
    """Refuse the options that build an operator when an operator is passed instead.

    Parameters
    ----------
    given : dict[str, bool]
        Option name -> whether it was given (a value other than its default).
    hint : str
        Appended to the message (e.g. how to pass the remaining arguments).

    Raises
    ------
    ValueError
        Naming the options that were given.

    Examples
    --------
    >>> refuse_options({"data": False, "params": False})
    """
    bad = sorted(k for k, v in given.items() if v)
    if bad:
        raise ValueError(f"Expected no {bad} with an operator: they are set when the operator "
                         f"is built (pass them to its constructor). {hint}".rstrip())

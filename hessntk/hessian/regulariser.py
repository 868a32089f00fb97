"""The Hessian of a regulariser ``R(params) -> scalar`` of a torch model's parameters.

A negative log prior that is not Gaussian enters the IIC through ``R(theta*) - R(theta0)``,
``grad R(theta*)`` and the Hessians ``hess R(theta*)``, ``hess R(theta0)``
(docs/theory.md, section 1). :class:`RegulariserOperator` provides all of them, matrix-free,
with the names of :class:`hessntk.spectral.protocols.RegulariserLike`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hessntk._model import as_flat, check_finite, ravel_params
from hessntk.spectral.layout import ParamLayout
from hessntk.spectral.operators import LinearOperator

__all__ = ["RegulariserOperator"]


class RegulariserOperator(LinearOperator):
    """``hess R(theta)`` of a regulariser of named parameters, at given parameter values.

    Parameters
    ----------
    R : callable
        ``R(params: dict[str, Tensor]) -> scalar tensor``, differentiable twice with
        ``torch.func`` (a negative log prior, up to a constant).
    params : dict[str, torch.Tensor] or torch.nn.Module
        The point: tensors by name (the names ``R`` reads), or a module's parameters.

    Attributes
    ----------
    loss : float
        ``R`` at ``params``.
    name : str
        ``R.__name__`` (a label for reports).
    layout : hessntk.spectral.layout.ParamLayout

    Raises
    ------
    ValueError
        ``R`` does not return a finite scalar.

    Examples
    --------
    >>> import torch
    >>> R = lambda p: 0.5 * (p["w"] ** 2).sum() + (p["w"] ** 4).sum() / 12
    >>> H = RegulariserOperator(R, {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)})
    >>> round(H.loss, 4), H.matvec(torch.ones(2, dtype=torch.float64)).tolist()  # diag(1 + w^2)
    (3.9167, [2.0, 5.0])
    """

    def __init__(
        self,
        R: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        params: Mapping[str, torch.Tensor] | nn.Module,
    ) -> None:
        if not callable(R):
            raise TypeError(f"Expected R(params) -> scalar; got {type(R).__name__}.")
        if isinstance(params, nn.Module):
            params = dict(params.named_parameters())
        tensors = {str(k): torch.as_tensor(v).detach() for k, v in params.items()}
        self.layout = ParamLayout(tensors)
        if not self.layout.dtype.is_floating_point:
            raise TypeError(f"Expected floating-point parameters; got {self.layout.dtype}.")
        super().__init__(self.layout.n, self.layout.dtype, self.layout.device, backend="torch")
        self.R = R
        self.name = getattr(R, "__name__", "callable")
        self._theta = self.layout.flatten(tensors)
        self.loss = self._value(self._theta, "R(params)")

    def _flat(self, vec: torch.Tensor) -> torch.Tensor:
        return self.R(self.layout.unravel(vec))

    def _value(self, vec: torch.Tensor, what: str) -> float:
        value = self._flat(vec)
        if not torch.is_tensor(value) or value.numel() != 1:
            raise ValueError(f"Expected {what} to return a scalar tensor; got "
                             f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}.")
        check_finite(value, what)
        return float(value)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        grad = torch.func.grad(self._flat)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(grad, (self._theta,), (v,))[1]

        HV = torch.func.vmap(hvp)(V.to(self.dtype).T).T
        check_finite(HV, "the Hessian-vector products of R")
        return HV

    def theta(self) -> torch.Tensor:
        """The point, flat ``(P,)``."""
        return self._theta.clone()

    def ravel(self, params: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Flatten parameter values by name (or a module's parameters)."""
        return ravel_params(self.layout, params, self.device)

    def unravel(self, vec: Any, dim: int = -1) -> dict[str, torch.Tensor]:
        """Split a flat vector into tensors by name."""
        if isinstance(vec, np.ndarray):
            vec = torch.from_numpy(vec)
        return self.layout.unravel(vec, dim)

    def gradient(self) -> torch.Tensor:
        """``grad R`` at the point, flat ``(P,)``."""
        g = torch.func.grad(self._flat)(self._theta)
        check_finite(g, "the gradient of R")
        return g

    def loss_at(self, theta: Any) -> float:
        """``R`` at other flat parameters."""
        return self._value(as_flat(theta, self.layout, self.dtype, self.device), "R(params)")

    def at(self, theta: Any) -> RegulariserOperator:
        """The Hessian of the same ``R`` at other flat parameters."""
        flat = as_flat(theta, self.layout, self.dtype, self.device)
        return RegulariserOperator(self.R, self.layout.unravel(flat))

    def __repr__(self) -> str:
        return f"RegulariserOperator(n={self.shape[0]}, dtype={self.dtype}, R={self.loss:.6g})"

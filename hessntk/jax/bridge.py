"""Zero-copy DLPack bridge between jax arrays and torch tensors.

Used where :mod:`hessntk.jax` reuses torch-side code of :mod:`hessntk.criteria` unchanged (the
SLQ log-determinant of the IIC): :class:`TorchView` presents a jax operator as a torch
:class:`~hessntk.spectral.LinearOperator`, and every product crosses the bridge without a
copy (same buffer, checked in ``tests/jax/test_bridge.py``). The spectral core itself runs on
jax arrays directly for every jax operator.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch

from hessntk.spectral.operators import LinearOperator

__all__ = ["TorchView", "to_jax", "to_torch", "torch_device"]


def to_torch(x: jax.Array) -> torch.Tensor:
    """View a jax array as a torch tensor (no copy: both share the buffer).

    The tensor must not be modified in place: jax assumes its arrays are immutable.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(3.0)
    >>> to_torch(x).data_ptr() == x.unsafe_buffer_pointer()
    True
    """
    return torch.from_dlpack(x)


def to_jax(t: torch.Tensor) -> jax.Array:
    """View a torch tensor as a jax array (no copy for tensors on a jax-visible device).

    Examples
    --------
    >>> t = torch.arange(3.0)
    >>> to_jax(t).unsafe_buffer_pointer() == t.data_ptr()
    True
    """
    return jax.dlpack.from_dlpack(t.detach())


def torch_device(device: Any) -> torch.device:
    """The torch device of a jax device (``cpu`` or ``cuda:<id>``)."""
    if device is None or device.platform == "cpu":
        return torch.device("cpu")
    if device.platform in ("gpu", "cuda", "rocm"):
        return torch.device("cuda", getattr(device, "local_hardware_id", device.id))
    raise ValueError(f"Expected a CPU or GPU jax device for the torch bridge; got {device}.")


_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
           np.dtype(np.float16): torch.float16}


class TorchView(LinearOperator):
    """A torch-facing view of a jax operator; products cross by DLPack without copies.

    Exposes the attributes torch-side code reads (``dtype`` as a ``torch.dtype``, ``device``,
    ``structural_nullity``) and, when the base has them, ``diagonal()`` and ``jvp(t)``.

    Parameters
    ----------
    op : LinearOperator
        An operator with ``backend="jax"``.
    """

    def __init__(self, op: LinearOperator) -> None:
        if op.backend != "jax":
            raise ValueError(f"Expected a jax operator; got backend {op.backend!r}.")
        dtype = _DTYPES.get(np.dtype(op.dtype))
        if dtype is None:
            raise TypeError(f"Expected a float16/32/64 operator; got {op.dtype}.")
        super().__init__(op.shape[0], dtype, torch_device(op.device), backend="torch")
        self.base = op
        self.structural_nullity = getattr(op, "structural_nullity", 0)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return to_torch(self.base.matmat(to_jax(V)))

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return to_torch(self.base.matvec(to_jax(v)))

    def diagonal(self) -> torch.Tensor:
        """``diag`` of the base operator, as a torch tensor."""
        return to_torch(self.base.diagonal())

    def jvp(self, tangent: torch.Tensor) -> torch.Tensor:
        """``J t`` of the base operator, as a torch tensor."""
        return to_torch(self.base.jvp(to_jax(tangent)))

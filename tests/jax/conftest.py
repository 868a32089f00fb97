"""Fixtures of the JAX tests: float64 on (restored afterwards) and one tiny MLP in two frameworks.

``jax_enable_x64`` is process-global: it is switched on for each module of this directory and
set back to its previous value when the module is done, so the rest of the suite sees the
setting it had before.
"""

from __future__ import annotations

import pytest

from tests.jax.models import (
    D_IN,
    NUM_CLASSES,
    WIDTH,
    classification_data,
    float64,
    mlp_weights,
)

try:
    import jax
except ImportError:  # the test modules skip themselves with pytest.importorskip
    jax = None


@pytest.fixture(autouse=True, scope="module")
def _x64():
    if jax is None:
        yield
        return
    with float64():
        yield


@pytest.fixture(scope="session")
def oracle():
    """Dense float64 references for the shared MLP on its 25 samples (computed once).

    ``H``: Hessian of the mean cross-entropy (``jax.hessian``); ``G``: its GGN ``J^T Lambda
    J``; ``J``: the ``(75, 75)`` Jacobian of the stacked logits (``jax.jacrev``); ``s``: the
    flat ``"init"`` prior variances. Parameters in torch order ``[(W1, b1), (W2, b2)]``.
    """
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from tests.jax.models import cross_entropy, mlp

    with float64():
        params = [tuple(jnp.asarray(a) for a in mlp_weights()[:2]),
                  tuple(jnp.asarray(a) for a in mlp_weights()[2:])]
        x, y = (jnp.asarray(a) for a in classification_data())
        flat, unravel = ravel_pytree(params)

        @jax.jit
        def references(flat, x, y):
            def logits(v):
                return mlp(unravel(v), x)

            H = jax.hessian(lambda v: cross_entropy(logits(v), y))(flat)
            J = jax.jacrev(logits)(flat).reshape(-1, flat.size)  # (n c, P)
            Lam = jax.hessian(lambda o: cross_entropy(o, y))(logits(flat))
            n, c = x.shape[0], NUM_CLASSES
            return H, J.T @ Lam.reshape(n * c, n * c) @ J, J

        H, G, J = (np.asarray(a) for a in references(flat, x, y))
    W1, b1, W2, b2 = mlp_weights()
    s = np.concatenate([np.full(W1.size, 2 / D_IN), np.ones(WIDTH),
                        np.full(W2.size, 2 / WIDTH), np.ones(NUM_CLASSES)])
    return {"H": H, "G": G, "J": J, "s": s}


@pytest.fixture
def jax_mlp():
    """``(params, (x, y))``: the shared MLP as a pytree ``[(W1, b1), (W2, b2)]`` and data."""
    import jax.numpy as jnp

    W1, b1, W2, b2 = (jnp.asarray(a) for a in mlp_weights())
    x, y = classification_data()
    return [(W1, b1), (W2, b2)], (jnp.asarray(x), jnp.asarray(y))


@pytest.fixture
def torch_mlp():
    """``(net, (x, y))``: the same MLP and data as a float64 torch module and tensors."""
    import torch

    net = torch.nn.Sequential(
        torch.nn.Linear(D_IN, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, NUM_CLASSES)
    ).double()
    with torch.no_grad():
        for p, w in zip(net.parameters(), mlp_weights(), strict=True):
            p.copy_(torch.from_numpy(w))
    x, y = classification_data()
    return net.eval(), (torch.from_numpy(x), torch.from_numpy(y))

"""The tiny MLP shared by the JAX tests (numpy weights, JAX functions) and a float64 switch."""

from __future__ import annotations

import contextlib

import numpy as np

#: Sizes of the shared model: inputs, hidden units, classes, samples.
D_IN, WIDTH, NUM_CLASSES, NUM_SAMPLES = 5, 8, 3, 25  # N = n c = 75 = P


def mlp_weights(seed: int = 0) -> list[np.ndarray]:
    """``[W1 (WIDTH, D_IN), b1, W2 (NUM_CLASSES, WIDTH), b2]`` in float64, torch layout."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((WIDTH, D_IN)) / np.sqrt(D_IN),
        0.1 * rng.standard_normal(WIDTH),
        rng.standard_normal((NUM_CLASSES, WIDTH)) / np.sqrt(WIDTH),
        0.1 * rng.standard_normal(NUM_CLASSES),
    ]


def classification_data(n: int = NUM_SAMPLES, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D_IN)), rng.integers(0, NUM_CLASSES, n)


def mlp(params, x):
    """The JAX twin of ``Linear -> Tanh -> Linear`` on params ``[(W1, b1), (W2, b2)]``."""
    import jax.numpy as jnp

    (W1, b1), (W2, b2) = params
    return jnp.tanh(x @ W1.T + b1) @ W2.T + b2


def cross_entropy(logits, y):
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(logsumexp(logits, axis=1) - picked)


#: One entry per trace of :func:`mlp_loss` (a Python side effect runs only while jax traces).
TRACES: list[int] = []


def mlp_loss(params, batch):
    TRACES.append(1)
    x, y = batch
    return cross_entropy(mlp(params, x), y)


@contextlib.contextmanager
def float64():
    """Switch ``jax_enable_x64`` on, and back to its previous value afterwards."""
    import jax

    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)

"""Run by ``test_mesh.py`` in a fresh process with two forced host devices.

``python tests/jax/mesh_worker.py OUT.npz``: the same products, spectra and criteria of
operators on one device and on a 2-device mesh (batch sharded, parameters replicated), the
shardings of the batches, and how many times the loss was traced after the first product.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from jax.sharding import Mesh  # noqa: E402

import hessntk  # noqa: E402
from hessntk.criteria import iic  # noqa: E402
from hessntk.jax import GGNOperator, GramOperator, HessianOperator  # noqa: E402

TRACES: list[int] = []


def model(p: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def cross_entropy(out: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(out.shape[0]), y])


def loss(p: dict, batch: tuple) -> jax.Array:
    TRACES.append(1)  # runs at trace time only
    return cross_entropy(model(p, batch[0]), batch[1])


def results(mesh: Mesh | None) -> dict[str, np.ndarray]:
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"w1": jax.random.normal(k1, (4, 6)), "b1": jnp.zeros(6),
              "w2": jax.random.normal(k2, (6, 3))}
    x = jax.random.normal(k3, (37, 4))
    y = jax.random.randint(k4, (37,), 0, 3)
    data = [(x[:16], y[:16]), (x[16:], y[16:])]  # 16 and 21 samples: 21 = 20 sharded + 1
    H = HessianOperator(loss, params, data, blocks="layer", mesh=mesh)
    G = GGNOperator(model, cross_entropy, params, data, mesh=mesh)
    fx = model(params, x[:10])
    K = GramOperator(model, params, data=[(x[:5], fx[:5]), (x[5:10], fx[5:10])], prior=1.0,
                     mesh=mesh)
    rng = np.random.default_rng(0)
    V = rng.standard_normal((H.shape[0], 5))
    W = rng.standard_normal((K.shape[0], 3))
    out = {"HV": H @ V, "GV": G @ V, "gradient": H.gradient(), "loss": H.loss,
           "loss_at": H.loss_at(H.theta() + 0.01)}
    traced = len(TRACES)
    for _ in range(3):
        H @ V
    out["retraced"] = len(TRACES) - traced
    out["eigsh"] = hessntk.eigsh(H, k=3, seed=0).eigenvalues
    d = hessntk.slq(H, num_probes=3, num_matvecs=15, seed=0)
    out["slq_nodes"], out["slq_weights"] = d.nodes, d.weights
    out["trace"] = hessntk.trace(H, num_matvecs=30, seed=0).value
    out["KW"], out["K_dense"], out["K_diagonal"] = K @ W, K.dense(), K.diagonal()
    out["iic"] = iic(K).value
    out["sharded_batches"] = sum(
        not jax.tree_util.tree_leaves(b.tree)[0].sharding.is_fully_replicated
        for b in H.batches)
    out["num_batches"] = len(H.batches)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def main() -> None:
    assert len(jax.devices()) == 2, jax.devices()
    single = results(None)
    sharded = results(Mesh(np.array(jax.devices()), ("batch",)))
    np.savez(sys.argv[1], **{f"single_{k}": v for k, v in single.items()},
             **{f"mesh_{k}": v for k, v in sharded.items()})


if __name__ == "__main__":
    main()

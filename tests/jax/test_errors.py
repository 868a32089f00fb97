"""Bad inputs are refused at the entry point, naming the offending thing and the fix."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402

import hessntk.jax as hj  # noqa: E402
from tests.jax.models import float64  # noqa: E402

rng = np.random.default_rng(0)
X, Y = rng.standard_normal((8, 3)), rng.standard_normal(8)


def data():
    return jnp.asarray(X), jnp.asarray(Y)


def params():
    return {"w": jnp.asarray(rng.standard_normal(3))}


def loss(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def f(p, x):
    return x @ p["w"]


def test_non_scalar_loss():
    with pytest.raises(ValueError, match=r"scalar mean loss; got shape \(8,\) for batch 0.*mean"):
        hj.HessianOperator(lambda p, b: (b[0] @ p["w"] - b[1]) ** 2, params(), data())


def test_parameter_leaves():
    with pytest.raises(TypeError, match=r"int.* at \['idx'\].*equinox.partition"):
        hj.HessianOperator(loss, {**params(), "idx": jnp.arange(3)}, data())
    with pytest.raises(TypeError, match=r"got custom_jvp at \[.act.\].*equinox.partition"):
        hj.HessianOperator(loss, {**params(), "act": jax.nn.relu}, data())
    mixed = {"w": jnp.ones(3), "b": jnp.ones((), dtype=jnp.float32)}
    with pytest.raises(TypeError, match="one floating dtype.*float32 at \\['b'\\]"):
        hj.HessianOperator(loss, mixed, data())
    with pytest.raises(ValueError, match="empty pytree"):
        hj.HessianOperator(loss, {}, data())


def test_float64_without_x64_says_how_to_enable_it():
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match=r"float64 at \['w'\].*jax.config.update\("
                                             r"'jax_enable_x64', True\)"):
            hj.HessianOperator(loss, {"w": np.ones(3)}, (X, Y))
        p32 = {"w": jnp.ones(3, dtype=jnp.float32)}
        with pytest.raises(ValueError, match="jax_enable_x64=True for a float64 Gram"):
            hj.gram(f, p32, X.astype(np.float32), dtype=np.float64)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_batches():
    x, y = data()
    with pytest.raises(ValueError, match="structure, dtypes.* in batch 1 vs .* in batch 0"):
        hj.HessianOperator(loss, params(), [(x[:4], y[:4]), {"x": x[4:], "y": y[4:]}])
    with pytest.raises(ValueError, match="per-sample shapes; got .*batch 1"):
        hj.HessianOperator(loss, params(), [(x[:4], y[:4]), (x[4:, :2], y[4:])])
    with pytest.raises(ValueError, match=r"batch 0 of data to have the same leading \(batch\)"):
        hj.HessianOperator(loss, params(), (x[:5], y[:4]))
    with pytest.raises(TypeError, match=r"float32 at \[0\] in batch 0.*astype"):
        hj.HessianOperator(loss, params(), (x.astype(jnp.float32), y))
    with pytest.raises(ValueError, match="at least one batch"):
        hj.HessianOperator(loss, params(), [])
    with pytest.raises(ValueError, match=r"\(inputs, targets\) pair; got ArrayImpl in batch 0"):
        hj.GGNOperator(f, lambda o, t: jnp.mean((o - t) ** 2), params(), [x])


def test_randomness_drawn_outside_the_inputs_is_refused():
    noise = np.random.default_rng(1)

    def dropout_loss(p, b):  # a "dropout key" drawn in Python: fixed at each trace
        key = jax.random.PRNGKey(int(noise.integers(1 << 30)))
        mask = jax.random.bernoulli(key, 0.5, b[0].shape)
        return jnp.mean(((b[0] * mask) @ p["w"] - b[1]) ** 2)

    with pytest.raises(ValueError, match="deterministic.*inference_mode.*inside the batch"):
        hj.HessianOperator(dropout_loss, params(), data())
    hj.HessianOperator(dropout_loss, params(), data(), check_deterministic=False)  # opt out


def test_non_finite_loss_and_products():
    x, y = data()
    with pytest.raises(FloatingPointError, match="finite loss; got .*batch 1"):
        hj.HessianOperator(lambda p, b: jnp.mean(jnp.log(b[1]) * p["w"][0]), params(),
                           [(x[:4], jnp.ones(4)), (x[4:], jnp.zeros(4))])
    H = hj.HessianOperator(lambda p, b: jnp.mean(jnp.sqrt(p["w"] ** 2)) + 0 * b[1].sum(),
                           {"w": jnp.zeros(3)}, data())
    with pytest.raises(FloatingPointError, match="Hessian-vector product of batch 0"):
        H.matvec(jnp.ones(3))
    with pytest.raises(ValueError, match=r"Expected v of shape \(3,\)"):
        H.matvec(jnp.ones(4))
    # an infinite weight into a saturating tanh: finite loss and products, refused by name
    with pytest.raises(FloatingPointError, match=r"parameter \['w'\]; got 1 non-finite of 3"):
        hj.HessianOperator(lambda p, b: jnp.mean(jnp.tanh(b[0][:, :3] @ p["w"]) - b[1]) ** 2,
                           {"w": jnp.array([1.0, jnp.inf, 0.0])}, data())


def test_ntk_inputs_and_options():
    x = jnp.asarray(X)
    with pytest.raises(ValueError, match="per-sample outputs.*not a loss"):
        hj.gram(lambda p, x: jnp.sum(x @ p["w"]), params(), x)
    with pytest.raises(ValueError, match="batch size of inputs along axis 0.*not batch reductions"):
        hj.gram(lambda p, x: jnp.mean(x @ p["w"], keepdims=True), params(), x)
    with pytest.raises(ValueError, match="mode to be one of"):
        hj.gram(f, params(), x, mode="blocks")
    with pytest.raises(ValueError, match="memory budget .* Use hessntk.jax.GramOperator"):
        hj.gram(f, params(), x, max_memory=100)
    with pytest.raises(ValueError, match="Jacobian that fits .* hessntk.jax.gram"):
        hj.jacobian(f, params(), x, max_memory=100)
    with pytest.raises(ValueError, match="parameters' structure"):
        hj.gram(f, params(), x, prior={"v": 1.0})
    with pytest.raises(ValueError, match=r"prior\['w'\] to be a finite non-negative"):
        hj.gram(f, params(), x, prior={"w": -1.0})
    with pytest.raises(ValueError, match="exactly one of inputs= .* got both"):
        hj.GramOperator(f, params(), x, data=(x, x))
    with pytest.raises(ValueError, match="outputs= to be one of"):
        hj.GramOperator(f, params(), x, outputs="softmax")


def test_criteria_options():
    x, y = data()
    with pytest.raises(ValueError, match="observations in"):
        hj.iic(f, params(), (x, y), observations="labels")
    with pytest.raises(ValueError, match="reference= the minimiser"):
        hj.iic(f, params(), (x, y), prior=lambda p: jnp.sum(p["w"] ** 2))
    with pytest.raises(ValueError, match="reference= as a pytree"):
        hj.iic(f, params(), (x, y), prior=1.0, reference={"w": jnp.zeros(4)})
    # The matrix-free callable prior exists on JAX too; like torch's, it has no soft variant.
    with pytest.raises(ValueError, match="soft=None with a callable prior and method='slq'"):
        hj.iic(f, params(), (x, y), prior=lambda p: jnp.sum(p["w"] ** 2),
               reference={"w": jnp.zeros(3)}, method="slq", soft=1.0)
    with pytest.raises(ValueError, match="Checkpoint 'b' does not match"):
        hj.compare({"a": params(), "b": {"w": jnp.zeros(4)}}, f, (x, y), prior=1.0, soft=1.0,
                   method="slq", num_probes=2, num_matvecs=2)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        hj.compare([], f, (x, y))


def test_float64_helper_restores_the_setting():
    before = bool(jax.config.jax_enable_x64)
    with float64():
        assert jax.config.jax_enable_x64
    assert bool(jax.config.jax_enable_x64) == before


def test_quantization_options():
    with pytest.raises(ValueError, match="layer 'x' to hold weights"):
        hj.quantization_sensitivity(loss, {"x": jnp.ones(3)}, data(), layers={"x": ["['x']"]})
    with pytest.raises(ValueError, match="unknown \\['w'\\]"):
        hj.quantization_sensitivity(loss, params(), data(), layers={"a": ["w"]})
    with pytest.raises(ValueError, match="weights .* to quantize; got none"):
        hj.quantization_sensitivity(loss, params(), data())
    with pytest.raises(ValueError, match="metric in"):
        hj.quantization_sensitivity(loss, params(), data(), metric="hawq")
    with pytest.raises(ValueError, match="convention in"):  # A and B both exist on JAX
        hj.iic(f, params(), data(), convention="C")

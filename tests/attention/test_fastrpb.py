"""FastRPB (FFT relative positional bias): the FFT products against explicit float64 Toeplitz / W2d
matrices, CLS and padding handling, init, gradients, O(n) memory, and composition with every
registered attention inside the encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from attention.fastrpb import FastRPB, fast_fft_length, fastrpb_1d
from lra.model import Encoder
from lra.registry import ATTENTION_CONFIGS, runnable_attentions
from lra.build import build_attention, model_rngs
from tests.attention.scaling import growth_per_doubling
from tests.conftest import CONFIG_DIR

BIAS_CONFIGS = CONFIG_DIR / "positional_bias"
SPEC = AttentionSpec(num_heads=2, head_dim=4, max_length=13, has_cls=True)  # 12 positions + CLS


def bias_factory(name="fastrpb", **overrides):
    config = OmegaConf.merge(OmegaConf.load(BIAS_CONFIGS / f"{name}.yaml"), overrides)
    return build_attention(config, kind="positional_bias")[1]


def make_bias(spec, name="fastrpb", seed=0, randomise=True, **overrides):
    """A FastRPB layer from its YAML; with ``randomise`` its weights are O(1) so the term matters."""
    bias = bias_factory(name, **overrides)(spec, rngs=nnx.Rngs(params=seed))
    if randomise:
        bias.w[...] = jax.random.normal(jax.random.key(seed + 100), bias.w[...].shape)
    return bias


def jitted(bias):
    """One compiled program per shape: far cheaper on a busy CPU than op-by-op eager dispatch."""
    return jax.jit(lambda v, key_mask: bias(v, key_mask))


def offset_weight(w, offset, base_type):
    """c_h(r) of the stored parameters, read the documented way: full index r + S - 1, symmetric |r|."""
    if base_type == "full":
        return w[:, offset + (w.shape[1] - 1) // 2]
    return w[:, abs(offset)]


def toeplitz_reference(w, v, key_mask, base_type, has_cls):
    """out_i = sum_j W[i, j] m_j v_j with the explicit matrix W[i, j] = c(i - j), float64 loops."""
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    batch, n, heads, d = v.shape
    first = int(has_cls)
    out = np.zeros_like(v)
    for h in range(heads):
        matrix = np.zeros((n, n))
        for i in range(first, n):
            for j in range(first, n):
                matrix[i, j] = offset_weight(w, (i - first) - (j - first), base_type)[h]
        for b in range(batch):
            out[b, :, h] = matrix @ (v[b, :, h] * np.asarray(key_mask[b], np.float64)[:, None])
    return out


def w2d_reference(w, v, grid_shape, base_type, has_cls):
    """Explicit W2d[(r,c),(r',c')] = c(r - r') + c(c - c') on row-major tokens, float64 loops."""
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    height, width = grid_shape
    first = int(has_cls)
    cells = [(r, c) for r in range(height) for c in range(width)]
    out = np.zeros_like(v)
    for h in range(v.shape[2]):
        matrix = np.array([[offset_weight(w, r - r2, base_type)[h] + offset_weight(w, c - c2, base_type)[h]
                            for (r2, c2) in cells] for (r, c) in cells])
        for b in range(v.shape[0]):
            out[b, first:, h] = matrix @ v[b, first:, h]
    return out


@pytest.mark.parametrize("base_type", ["full", "symmetric"])
@pytest.mark.parametrize("has_cls", [False, True])
def test_fft_product_equals_the_explicit_toeplitz_product(base_type, has_cls):
    max_positions = 13
    spec = AttentionSpec(num_heads=2, head_dim=3, max_length=max_positions + int(has_cls), has_cls=has_cls)
    with jax.enable_x64(True):
        bias = make_bias(spec, bias_base_type=base_type)
        bias.w[...] = bias.w[...].astype(jnp.float64)
        expected_params = 2 * max_positions - 1 if base_type == "full" else max_positions
        assert bias.w[...].shape == (2, expected_params)
        rng, run = np.random.default_rng(0), jitted(bias)
        for n in (2, 7, 13):  # even and odd, shorter than max_length and full length
            length = n + int(has_cls)
            v = rng.normal(size=(2, length, 2, 3))
            mask = np.ones((2, length), bool)
            if n >= 3:  # a padded tail in one example, a hole in the other
                mask[1, length - n // 3:] = False
                mask[0, length - 2] = False
            out = np.asarray(run(jnp.asarray(v), jnp.asarray(mask)))
            assert out.dtype == np.float64
            np.testing.assert_allclose(out, toeplitz_reference(bias.w[...], v, mask, base_type, has_cls),
                                       rtol=1e-10, atol=1e-11, err_msg=f"n={n}")


@pytest.mark.parametrize("base_type", ["full", "symmetric"])
@pytest.mark.parametrize("grid_shape,has_cls", [((3, 5), False), ((4, 4), True)])
def test_2d_fft_product_equals_the_explicit_w2d_product(base_type, grid_shape, has_cls):
    n = grid_shape[0] * grid_shape[1]
    spec = AttentionSpec(num_heads=2, head_dim=3, max_length=n + int(has_cls), has_cls=has_cls,
                         grid_shape=grid_shape)
    with jax.enable_x64(True):
        bias = make_bias(spec, name="fastrpb_2d", bias_base_type=base_type)
        bias.w[...] = bias.w[...].astype(jnp.float64)
        v = np.random.default_rng(1).normal(size=(2, n + int(has_cls), 2, 3))
        out = np.asarray(jitted(bias)(jnp.asarray(v), jnp.ones((2, n + int(has_cls)), bool)))
    np.testing.assert_allclose(out, w2d_reference(bias.w[...], v, grid_shape, base_type, has_cls),
                               rtol=1e-10, atol=1e-11)


def test_2d_without_a_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="fastrpb_2d.*grid_shape"):
        make_bias(AttentionSpec(num_heads=2, head_dim=4, max_length=17, has_cls=True), name="fastrpb_2d")


def test_longer_than_built_is_a_clear_error():
    bias = make_bias(SPEC, randomise=False)
    with pytest.raises(ValueError, match="exceed"):
        bias(jnp.ones((1, 14, 2, 4)), jnp.ones((1, 14), bool))


def test_cls_output_is_zero_and_its_value_never_enters_the_sum():
    bias = jitted(make_bias(SPEC))
    v = jax.random.normal(jax.random.key(2), (2, 13, 2, 4))
    mask = jnp.ones((2, 13), bool)
    out = np.asarray(bias(v, mask))
    np.testing.assert_array_equal(out[:, 0], 0.0)
    changed = np.asarray(bias(v.at[:, 0].set(1e3), mask))
    np.testing.assert_array_equal(changed, out)
    assert np.abs(out[:, 1:]).max() > 1e-2  # the term is not trivially zero


@pytest.mark.parametrize("name,grid", [("fastrpb", None), ("fastrpb_2d", (3, 4))])
def test_padded_values_cannot_change_real_outputs_unless_leaking(name, grid):
    spec = AttentionSpec(num_heads=2, head_dim=4, max_length=13, has_cls=True, grid_shape=grid)
    v = jax.random.normal(jax.random.key(3), (2, 13, 2, 4))
    mask = jnp.ones((2, 13), bool).at[0, 9:].set(False).at[1, 4].set(False)
    garbage = v.at[0, 9:].set(50.0).at[1, 4].set(-50.0)
    clean = jitted(make_bias(spec, name=name))
    np.testing.assert_allclose(np.asarray(clean(garbage, mask))[mask], np.asarray(clean(v, mask))[mask],
                               rtol=1e-5, atol=1e-5)
    if name == "fastrpb":  # 1-D: outputs at real positions don't depend on how much padding follows
        short = np.asarray(clean(v[:, :9], mask[:, :9]))
        np.testing.assert_allclose(short[0], np.asarray(clean(v, mask))[0, :9], rtol=1e-5, atol=1e-5)
    leaky = jitted(make_bias(spec, name=name, leak_padding=True))
    difference = np.asarray(leaky(garbage, mask)) - np.asarray(leaky(v, mask))
    assert np.abs(difference[np.asarray(mask)]).max() > 1.0  # the authors' leak is real


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_gradients_fp32_and_bf16(dtype):
    bias = make_bias(SPEC)
    v = jax.random.normal(jax.random.key(4), (2, 13, 2, 4), dtype)
    mask = jnp.stack([jnp.arange(13) < 8, jnp.zeros(13, bool)])  # second example fully padded
    assert bias(v, mask).dtype == dtype

    def loss(w, v):
        return fastrpb_1d(w, v, mask, has_cls=True).astype(jnp.float32).sum()

    grad_w, grad_v = jax.jit(jax.grad(loss, argnums=(0, 1)))(bias.w[...], v)
    assert np.isfinite(np.asarray(grad_w)).all() and np.isfinite(np.asarray(grad_v, np.float32)).all()
    assert float(jnp.abs(grad_w).sum()) > 0 and grad_v.dtype == dtype


def test_gradients_match_the_explicit_matrix_path():
    spec = AttentionSpec(num_heads=2, head_dim=3, max_length=9)
    bias = make_bias(spec)
    v = jax.random.normal(jax.random.key(5), (1, 7, 2, 3))
    mask = jnp.ones((1, 7), bool).at[0, 5:].set(False)
    n = 7
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]  # i - j

    def explicit(w, v):  # W[h, i, j] = c_h(i - j) gathered from the stored vector
        matrix = w[:, offsets + (w.shape[1] - 1) // 2]
        return jnp.einsum("hij,bjhd->bihd", matrix, v * mask[:, :, None, None])

    def fft(w, v):
        return fastrpb_1d(w, v, mask, bias_base_type="full")

    cotangent = jax.random.normal(jax.random.key(6), v.shape)
    loss = lambda f: lambda w, v: (f(w, v) * cotangent).sum()
    w0 = bias.w[...]
    np.testing.assert_allclose(np.asarray(fft(w0, v)), np.asarray(explicit(w0, v)), rtol=1e-5, atol=1e-5)
    gradient = lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1)))(w0, v)
    for a, b in zip(gradient(fft), gradient(explicit)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_init_is_near_zero_mirrored_and_drawn_per_layer():
    spec = AttentionSpec(num_heads=4, head_dim=4, max_length=257, has_cls=True)
    rngs = nnx.Rngs(params=0)
    factory = bias_factory()
    first, second = factory(spec, rngs=rngs), factory(spec, rngs=rngs)  # two layers, one stream
    w = np.asarray(first.w[...])
    assert w.shape == (4, 511)
    assert np.abs(w).max() < 256 * 1e-5 * 5 + 1e-6  # |r alpha N(0,1) + beta U(0,1)|, r < 256
    np.testing.assert_array_equal(w, w[:, ::-1])  # full starts symmetric: c(r) = w[|r|]
    assert np.all(np.abs(np.diff(w[:, 255:], axis=1)) > 0)  # linear in |r| with a per-head slope
    assert not np.allclose(w, np.asarray(second.w[...]))  # each layer its own draw (authors: PRNGKey(9))
    again = factory(spec, rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(np.asarray(again.w[...]), w)  # reproducible from the seed
    assert not np.allclose(w[0], w[1])  # heads differ


def test_fft_length_is_smooth_and_long_enough():
    for minimum in (1, 2, 7, 13, 511, 4095, 4097):
        size = fast_fft_length(minimum)
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        assert size >= minimum and rest == 1 and size < 1.25 * minimum + 2


def test_memory_grows_linearly():
    bias = make_bias(AttentionSpec(num_heads=2, head_dim=16, max_length=2048), randomise=False)
    as_attention = lambda q, k, v, mask, deterministic: bias(v, mask)  # q, k unused: only W V is measured
    ratios = growth_per_doubling(as_attention, backward=True)
    assert all(r < 2.5 for r in ratios), f"fwd+bwd temp bytes ratio per doubling of n (512->2048): {ratios}"


def tiny_encoder(attention_factory, positional_bias=None, **overrides):
    kwargs = dict(vocab_size=17, num_classes=3, max_length=16, attention=attention_factory, emb_dim=8,
                  num_heads=2, qkv_dim=8, mlp_dim=8, num_layers=1, pooling="cls",
                  positional_bias=positional_bias, rngs=model_rngs(0))
    kwargs.update(overrides)
    return Encoder(**kwargs)


def bias_modules(model):
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, FastRPB)]


def randomise_biases(model, scale=0.3):
    for layer, module in enumerate(bias_modules(model)):
        module.w[...] = scale * jax.random.normal(jax.random.key(7 + layer), module.w[...].shape)


def padded_logits(model, real, totals):
    outputs = []
    for total in totals:
        tokens = np.zeros((real.shape[0], total), np.int32)
        tokens[:, : real.shape[1]] = real
        outputs.append(np.asarray(model(jnp.asarray(tokens), deterministic=True)))
    return outputs


# The default suite composes the add-on with one attention of each kind (exact, random-feature kernel,
# sparse pattern, hashing); `make test-slow` with every registered one.
COMPOSITION_SAMPLE = {"softmax", "performer", "local", "reformer"}


@pytest.mark.parametrize("attention_name", [
    name if name in COMPOSITION_SAMPLE else pytest.param(name, marks=pytest.mark.slow)
    for name in runnable_attentions("cpu")[0]])
def test_composes_with_every_registered_attention(attention_name):
    """Encoder(attention YAML + fastrpb YAML): finite, padding-invariant with an O(1) bias term, and the
    term changes the output.

    One layer and two lengths to stay cheap: the cost is one eager compile per attention and shape.
    """
    _, attention, _ = build_attention(OmegaConf.load(ATTENTION_CONFIGS / f"{attention_name}.yaml"))
    model = tiny_encoder(attention, bias_factory(), pooling="mean")  # one layer: CLS pooling would hide W V
    randomise_biases(model)
    real = np.random.default_rng(8).integers(1, 17, (2, 9))
    short, long = padded_logits(model, real, (9, 16))
    assert np.isfinite(short).all() and np.isfinite(long).all()
    np.testing.assert_allclose(long, short, rtol=1e-4, atol=1e-4)
    randomise_biases(model, scale=0.0)  # the same model without the term: the add-on is not a no-op
    assert np.abs(padded_logits(model, real, (9,))[0] - short).max() > 1e-4


def test_encoder_builds_one_bias_per_layer_each_with_its_own_init():
    _, attention, _ = build_attention(OmegaConf.load(ATTENTION_CONFIGS / "softmax.yaml"))
    first, second = bias_modules(tiny_encoder(attention, bias_factory(), num_layers=2))
    assert first.w[...].shape == (2, 2 * 16 - 1)  # max_length 16 tokens, CLS excluded
    assert not np.allclose(np.asarray(first.w[...]), np.asarray(second.w[...]))


def test_2d_bias_runs_in_an_image_encoder():
    _, attention, _ = build_attention(OmegaConf.load(ATTENTION_CONFIGS / "softmax.yaml"))
    model = tiny_encoder(attention, bias_factory("fastrpb_2d"), max_length=20, grid_shape=(4, 5), pad_id=None)
    randomise_biases(model)
    pixels = jnp.asarray(np.random.default_rng(9).integers(0, 17, (2, 20)), jnp.int32)
    assert np.isfinite(np.asarray(model(pixels, deterministic=True))).all()

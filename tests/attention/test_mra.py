"""MRA-2 / MRA-2-s against a brute-force float64 reference of their own formula, their exact limit
(all block pairs selected = softmax), budget, priors, the 4 x 8 patch order, padding and memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.base import AttentionSpec
from attention.mra import (MRAAttention, from_internal, mra_attention, prior_mask, select_blocks,
                           selection_scores, to_internal)
from tests.attention.references import softmax_reference
from tests.attention.registry_fixtures import make_attention
from tests.attention.scaling import growth_per_doubling


def _inputs(seed, batch=2, length=24, heads=2, dim=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, length, heads, dim)).astype(dtype) for _ in range(3)]


def _run(q, k, v, mask, **options):
    """mra_attention in float64 on NumPy inputs."""
    with jax.enable_x64(True):
        out = mra_attention(*(jnp.asarray(t) for t in (q, k, v, mask)), **options)
        return np.asarray(out)


def mra_reference(q, k, v, mask, *, block, bpr, mode, first_n=0, diag_n=0, selection="global",
                  budget="input", rowmax_empty=False):
    """The MRA-2 / MRA-2-s formula with explicit loops: every (query, real key) pair gets weight
    exp(q.k/sqrt d) if its block pair is selected, else (MRA-2 only) exp(q^.k^/sqrt d) of the block means."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    batch, n, heads, d = q.shape
    nb = -(-n // block)
    out = np.zeros_like(q)
    for b in range(batch):
        real = np.zeros(nb * block, bool)
        real[:n] = mask[b]
        counts = [int(real[r * block:(r + 1) * block].sum()) for r in range(nb)]

        def mean(x, r):
            rows = [i for i in range(r * block, min((r + 1) * block, n)) if real[i]]
            return sum(x[i] for i in rows) / len(rows) if rows else np.zeros(d)

        for h in range(heads):
            qh = [mean(q[b, :, h], r) for r in range(nb)]
            kh = [mean(k[b, :, h], c) for c in range(nb)]
            low = np.array([[qh[r] @ kh[c] / np.sqrt(d) for c in range(nb)] for r in range(nb)])
            valid = [[counts[r] > 0 and counts[c] > 0 for c in range(nb)] for r in range(nb)]
            ranked = {}
            for r in range(nb):
                cols = [c for c in range(nb) if valid[r][c]] + ([c for c in range(nb) if counts[c] == 0]
                                                               if rowmax_empty else [])
                if not cols:
                    continue
                row_max = max(low[r, c] for c in cols)
                for c in range(nb):
                    if valid[r][c]:
                        forced = (diag_n > 0 and abs(r - c) <= diag_n // 2) or (first_n > 0 and (r < first_n or c < first_n))
                        ranked[(r, c)] = (forced, low[r, c] - row_max)
            if selection == "global":
                nb_budget = sum(c > 0 for c in counts) if budget == "real" else nb
                order = sorted(ranked, key=lambda p: ranked[p], reverse=True)
                chosen = set(order[:min(bpr * nb_budget, nb_budget * nb_budget if budget == "real" else nb * nb)])
            else:
                chosen = set()
                for r in range(nb):
                    row = sorted((p for p in ranked if p[0] == r), key=lambda p: ranked[p], reverse=True)
                    chosen |= set(row[:bpr])
            for i in range(n):
                if not real[i]:
                    continue
                numerator, denominator = np.zeros(d), 0.0
                for j in range(n):
                    if not real[j]:
                        continue
                    pair = (i // block, j // block)
                    if pair in chosen:
                        w = np.exp(q[b, i, h] @ k[b, j, h] / np.sqrt(d))
                    elif mode == "full":
                        w = np.exp(low[pair])
                    else:
                        continue
                    numerator += w * v[b, j, h]
                    denominator += w
                out[b, i, h] = numerator / denominator if denominator > 0 else 0.0
    return out


def _mask(batch, length, holes=True):
    mask = np.ones((batch, length), bool)
    mask[1, length - 7:] = False  # right padding: the last block of example 1 is partly/fully empty
    if holes:
        mask[0, 2] = mask[0, 9] = False
    return mask


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize("selection", ["global", "per_row"])
def test_all_block_pairs_selected_is_exact_softmax(mode, selection):
    """k = nb^2 (bpr >= nb): nothing is left to the low resolution, both variants are softmax."""
    q, k, v = _inputs(0, length=22)  # 22 is not a multiple of the block: internal padding
    mask = _mask(2, 22)
    out = _run(q, k, v, mask, block_size=4, block_per_row=6, approx_mode=mode, selection=selection,
               initial_prior_first_n_blocks=1, initial_prior_diagonal_n_blocks=1)
    reference = softmax_reference(q, k, v, mask)
    np.testing.assert_allclose(out[mask], reference[mask], rtol=1e-10, atol=1e-12)
    assert (out[~mask] == 0).all()


CASES = {
    "mra2": dict(mode="full"),
    "mra2_s": dict(mode="sparse"),
    "mra2_priors": dict(mode="full", first_n=1, diag_n=3),
    "mra2_s_priors": dict(mode="sparse", first_n=1, diag_n=1),
    "mra2_per_row": dict(mode="full", selection="per_row", first_n=1),
    "mra2_real_budget": dict(mode="full", budget="real"),
    "mra2_s_row_max_quirk": dict(mode="sparse", rowmax_empty=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_small_budget_matches_brute_force(case):
    options = CASES[case]
    q, k, v = _inputs(1, length=24)  # block 4: nb = 6, bpr 2: k = 12 of 36 block pairs
    mask = _mask(2, 24)
    out = _run(q, k, v, mask, block_size=4, block_per_row=2, approx_mode=options["mode"],
               initial_prior_first_n_blocks=options.get("first_n", 0),
               initial_prior_diagonal_n_blocks=options.get("diag_n", 0),
               selection=options.get("selection", "global"), budget_from=options.get("budget", "input"),
               row_max_over_empty_blocks=options.get("rowmax_empty", False))
    reference = mra_reference(q, k, v, mask, block=4, bpr=2, **options)
    np.testing.assert_allclose(out, reference, rtol=1e-10, atol=1e-12)
    exact = softmax_reference(q, k, v, mask)
    assert np.abs(out - exact)[mask].max() > 1e-3  # the budget binds: this is not softmax


def test_row_max_quirk_changes_the_selection_under_padding():
    """All real low-res logits negative + padding: the authors' max (with 0 from empty blocks)
    ranks blocks differently; both forms match the reference."""
    q, k, v = _inputs(2, length=24)
    shift = np.zeros(4)
    shift[0] = 3.0
    q, k = q + shift, k - shift  # q^.k^ < 0 for every block pair
    mask = np.ones((2, 24), bool)
    mask[:, 16:] = False  # two empty blocks
    outs = {}
    for quirk in (False, True):
        outs[quirk] = _run(q, k, v, mask, block_size=4, block_per_row=1, approx_mode="sparse",
                           budget_from="input", row_max_over_empty_blocks=quirk)
        reference = mra_reference(q, k, v, mask, block=4, bpr=1, mode="sparse", rowmax_empty=quirk)
        np.testing.assert_allclose(outs[quirk], reference, rtol=1e-10, atol=1e-12)
    assert np.abs(outs[True] - outs[False]).max() > 1e-3


def test_error_to_softmax_shrinks_as_blocks_per_row_grow():
    """nb = 4 blocks of 32: bpr 4 selects every pair (exact); fewer blocks per row cost accuracy,
    and MRA-2's low-resolution remainder recovers part of it at the same selection."""
    q, k, v = _inputs(3, batch=2, length=128, heads=2, dim=16, dtype=np.float32)
    mask = np.ones((2, 128), bool)
    mask[1, 100:] = False
    exact = softmax_reference(q, k, v, mask)
    errors = {mode: [float(np.abs(np.asarray(mra_attention(q, k, v, mask, block_per_row=bpr, approx_mode=mode))
                                  - exact)[mask].mean()) for bpr in (1, 2, 4)] for mode in ("full", "sparse")}
    for mode, errs in errors.items():
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5 < errs[1], errors
    assert errors["full"][0] < 0.5 * errors["sparse"][0] and errors["full"][1] < errors["sparse"][1], errors


def test_priors_are_always_selected_and_count_against_the_budget():
    nb, bpr = 10, 5  # 44 forced pairs (first row/column + 3-wide band) inside k = 50
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, nb, nb))
    forced = prior_mask(nb, 1, 3)
    logits = np.where(forced, logits - 50.0, logits)  # the forced pairs have the worst low-res scores
    counts = jnp.ones((2, nb))
    scores, _ = selection_scores(jnp.asarray(logits, jnp.float32), counts, first_n=1, diagonal_n=3)
    rows, cols, active = select_blocks(scores, counts, bpr)
    assert rows.shape[-1] == bpr * nb and bool(active.all())
    for b in range(2):
        for h in range(3):
            chosen = set(zip(np.asarray(rows[b, h]).tolist(), np.asarray(cols[b, h]).tolist()))
            assert len(chosen) == bpr * nb
            assert {tuple(p) for p in np.argwhere(forced)} <= chosen
    rows, cols, _ = select_blocks(scores, counts, bpr, selection="per_row")
    assert (np.bincount(np.asarray(rows[0, 0]), minlength=nb) == bpr).all()


def test_patch_order_layout_is_a_bijection_into_4x8_patches():
    height, width = 8, 16
    for has_cls in (False, True):
        n = height * width + has_cls
        positions = jnp.arange(1, n + 1)[None]  # 0 marks the padding slots
        internal = np.asarray(to_internal(positions, 32, (height, width), has_cls))[0]
        assert internal.size % 32 == 0 and sorted(internal[internal > 0] - 1) == list(range(n))
        np.testing.assert_array_equal(from_internal(internal[None], n, 32, (height, width), has_cls)[0],
                                      np.arange(1, n + 1))
        grid_blocks = internal[32 * has_cls:].reshape(-1, 32) - 1 - has_cls
        for block in grid_blocks:  # each block: 4 consecutive rows x 8 consecutive columns
            r, c = block // width, block % width
            assert sorted(set(r)) == list(range(r.min(), r.min() + 4)) and r.min() % 4 == 0
            assert sorted(set(c)) == list(range(c.min(), c.min() + 8)) and c.min() % 8 == 0
        if has_cls:
            assert internal[0] == 1 and (internal[1:32] == 0).all()  # CLS alone in the first block


@pytest.mark.parametrize("has_cls", [False, True])
def test_patch_order_equals_manually_permuted_sequence(has_cls):
    height, width = 8, 16
    n = height * width + has_cls
    q, k, v = _inputs(6, batch=1, length=n, dim=8, dtype=np.float32)
    mask = np.ones((1, n), bool)
    spec = AttentionSpec(num_heads=2, head_dim=8, max_length=n, has_cls=has_cls, grid_shape=(height, width))
    options = dict(block_per_row=2, approx_mode="full", initial_prior_first_n_blocks=1)
    out = MRAAttention(spec, rngs=None, patch_order=True, **options)(q, k, v, mask, deterministic=True)
    # by hand: patch p = (P, Q) holds pixels (4P + i, 8Q + j); CLS first, padded to a block of its own
    order = [has_cls + (4 * P + i) * width + 8 * Q + j
             for P in range(height // 4) for Q in range(width // 8) for i in range(4) for j in range(8)]
    front = 32 if has_cls else 0
    def permute(x):
        y = np.zeros((1, front + height * width, *x.shape[2:]), x.dtype)
        y[:, front:] = x[:, order]
        if has_cls:
            y[:, 0] = x[:, 0]
        return y
    permuted_mask = np.zeros((1, front + height * width), bool)
    permuted_mask[:, front:] = True
    permuted_mask[:, 0] = True
    flat = np.asarray(mra_attention(permute(q), permute(k), permute(v), permuted_mask, **options))
    expected = np.zeros_like(q)
    expected[:, order] = flat[:, front:]
    if has_cls:
        expected[:, 0] = flat[:, 0]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)
    plain = MRAAttention(spec, rngs=None, **options)(q, k, v, mask, deterministic=True)
    assert np.abs(np.asarray(plain) - expected).max() > 1e-3  # the order matters at this budget


def test_patch_order_errors_are_clear():
    with pytest.raises(ValueError, match="grid_shape"):
        MRAAttention(AttentionSpec(num_heads=2, head_dim=8, max_length=64), rngs=None, patch_order=True)
    with pytest.raises(ValueError, match="height % 4 == width % 8 == 0"):
        MRAAttention(AttentionSpec(num_heads=2, head_dim=8, max_length=96, grid_shape=(6, 16)), rngs=None,
                     patch_order=True)
    attention = MRAAttention(AttentionSpec(num_heads=2, head_dim=8, max_length=128, grid_shape=(8, 16)),
                             rngs=None, patch_order=True)
    q = jnp.zeros((1, 100, 2, 8))
    with pytest.raises(ValueError, match="input length 100"):
        attention(q, q, q, jnp.ones((1, 100), bool), deterministic=True)


def test_padding_invariance_needs_the_real_length_budget(mode="full"):
    """budget_from=real: padding never changes real outputs; the faithful budget_from=input gives
    the extra block rows' budget to real pairs once the budget binds (documented). MRA-2 only: MRA-2-s
    runs the same selection and exact-block code without the remainder."""
    real = 24  # block 4: 6 real blocks; bpr 2 -> 12 of 36 pairs
    q, k, v = _inputs(7, length=real, dtype=np.float32)
    outputs = {"real": [], "input": []}
    for total, seed in ((real, 0), (52, 2)):
        garbage = [np.random.default_rng(seed + i).normal(size=(2, total - real, 2, 4)) * 50 for i in range(3)]
        padded = [np.concatenate([t, g], axis=1).astype(np.float32) for t, g in zip((q, k, v), garbage)]
        mask = np.broadcast_to(np.arange(total) < real, (2, total))
        for budget in outputs:
            out = mra_attention(*padded, mask, block_size=4, block_per_row=2, approx_mode=mode,
                                budget_from=budget, initial_prior_first_n_blocks=1)
            assert np.isfinite(np.asarray(out)).all()
            outputs[budget].append(np.asarray(out[:, :real]))
    for out in outputs["real"][1:]:
        np.testing.assert_allclose(out, outputs["real"][0], rtol=1e-5, atol=1e-5)
    assert np.abs(outputs["input"][1] - outputs["input"][0]).max() > 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_finite_gradients_with_binding_budget_and_empty_example(dtype, mode):
    q, k, v = (jnp.asarray(t, dtype) for t in _inputs(8, length=64, dim=8, dtype=np.float32))
    mask = jnp.stack([jnp.arange(64) < 45, jnp.zeros(64, bool)])

    def loss(q, k, v):
        out = mra_attention(q, k, v, mask, block_size=8, block_per_row=2, approx_mode=mode,
                            initial_prior_first_n_blocks=1)
        assert out.dtype == dtype
        return (out.astype(jnp.float32) * mask[:, :, None, None]).sum() + 1e-3 * (out.astype(jnp.float32) ** 2).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()
        assert float(jnp.abs(g[1].astype(jnp.float32)).sum()) == 0.0  # nothing flows into the empty example
    assert float(jnp.abs(grads[0][0, :45].astype(jnp.float32)).sum()) > 0


@pytest.mark.parametrize("name", ["mra2", "mra2_s"])
def test_smoke_shape_with_cls_and_internal_padding(name):
    """The smoke preset's layer: 257 tokens (CLS + 256) -> 9 blocks, k = 72 of 81 pairs."""
    spec = AttentionSpec(num_heads=2, head_dim=16, max_length=257, has_cls=True)
    attention = make_attention(name, spec)
    q, k, v = (jnp.asarray(t) for t in _inputs(9, batch=2, length=257, dim=16, dtype=np.float32))
    mask = jnp.arange(257)[None, :] < jnp.array([[257], [120]])
    out = jax.jit(lambda *a: attention(*a, deterministic=False))(q, k, v, mask)
    assert out.shape == q.shape and np.isfinite(np.asarray(out)).all()
    exact = softmax_reference(q, k, v, np.asarray(mask))
    assert np.abs(np.asarray(out) - exact)[0].max() > 1e-4  # the full-length example is approximated
    np.testing.assert_allclose(np.asarray(out[1, :120]), exact[1, :120], rtol=1e-4, atol=1e-5)  # 4 real blocks


def test_memory_grows_linearly_while_softmax_is_quadratic():
    spec = AttentionSpec(num_heads=2, head_dim=16, max_length=4096)
    lengths = (1024, 2048, 4096)
    ratios = {name: growth_per_doubling(make_attention(name, spec), lengths=lengths, backward=True)
              for name in ("mra2", "mra2_s", "softmax")}
    message = f"fwd+bwd compiled temp bytes, ratio per doubling 1K->2K->4K: {ratios}"
    assert all(r < 2.5 for name in ("mra2", "mra2_s") for r in ratios[name]), message
    # softmax fwd+bwd: XLA reuses buffers at 1K, so judge its growth over the two doublings (x16 = n^2)
    assert ratios["softmax"][0] * ratios["softmax"][1] > 8.0, message


# --- the authors' released computation ------------------------------------------------------------

def authors_mra2(q, k, v, mask, *, num_blocks, mode, first_n, diag_n):
    """The authors' mra2_attention (mra2_kernel/attention.py with its CUDA index_max), written from
    its steps in float64 numpy for 32-token blocks. (b, n, h, d) in and out."""
    q, k, v = (np.transpose(np.asarray(t, np.float64), (0, 2, 1, 3)) for t in (q, k, v))
    b, h, n, d = q.shape
    bs, nb = 32, n // 32
    padded = not mask.all()  # their mask is None when nothing in the batch is padded
    tok = mask.astype(np.float64)
    if padded:
        q, k, v = (t * tok[:, None, :, None] for t in (q, k, v))
    count = tok.reshape(b, nb, bs).sum(-1)
    denom = (count + 1e-6) if padded else np.full((b, nb), float(bs))
    qh, kh, vh = (t.reshape(b, h, nb, bs, d).sum(-2) / denom[:, None, :, None] for t in (q, k, v))
    low = qh @ np.swapaxes(kh, -1, -2) / np.sqrt(d)
    row_max = low.max(-1, keepdims=True)
    if padded:
        low = low - 1e4 * ((count[:, None, :] * count[:, :, None]) < 0.5)[:, None]
    scores = low - row_max
    r, c = np.arange(nb)[:, None], np.arange(nb)[None, :]
    if diag_n > 0:
        scores = scores + 5e3 * (np.abs(r - c) <= diag_n // 2)
    if first_n > 0:
        scores = scores + 5e3 * (r < first_n) + 5e3 * (c < first_n)
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            flat = scores[bi, hi].reshape(-1)
            chosen = np.argsort(-flat, kind="stable")[:num_blocks]
            threshold = flat[chosen].min()
            token_max = np.full(n, -1e5)  # their index_max starts from int -1e8 / 1000
            logits = {}
            for idx in chosen:
                row, col = divmod(int(idx), nb)
                s = q[bi, hi, row * bs:(row + 1) * bs] @ k[bi, hi, col * bs:(col + 1) * bs].T / np.sqrt(d)
                logits[row, col] = s
                block_max = np.trunc(s.max(-1) * 1000) / 1000  # (int)(x * 1000) / 1000
                token_max[row * bs:(row + 1) * bs] = np.maximum(token_max[row * bs:(row + 1) * bs], block_max)
            hi_out, hi_norm = np.zeros((n, d)), np.zeros(n)
            for (row, col), s in logits.items():
                rows = slice(row * bs, (row + 1) * bs)
                s = s - token_max[rows, None]
                if padded:
                    s = s - 1e4 * (1 - tok[bi, col * bs:(col + 1) * bs])[None, :]
                attn = np.exp(s)
                hi_out[rows] += attn @ v[bi, hi, col * bs:(col + 1) * bs]
                hi_norm[rows] += attn.sum(-1)
            if mode == "full":
                selected = (scores[bi, hi] >= threshold).astype(np.float64)
                lo_attn = np.exp(low[bi, hi] - row_max[bi, hi] - 1e4 * selected) * count[bi][None, :]
                lo_out = np.repeat(lo_attn @ vh[bi, hi], bs, axis=0)
                lo_norm = np.repeat(lo_attn.sum(-1), bs)
                correction = np.repeat(row_max[bi, hi, :, 0], bs) - token_max
                if padded:
                    correction = correction * tok[bi]
                lo_corr = np.exp(correction * (correction <= 0))
                hi_corr = np.exp(-correction * (correction > 0))
                result = ((hi_out * hi_corr[:, None] + lo_out * lo_corr[:, None])
                          / (hi_norm * hi_corr + lo_norm * lo_corr + 1e-6)[:, None])
            else:
                result = hi_out / (hi_norm + 1e-6)[:, None]
            out[bi, hi] = result * (tok[bi][:, None] if padded else 1.0)
    return np.transpose(out, (0, 2, 1, 3))


AUTHORS_FORM = dict(budget_from="input", row_max_over_empty_blocks=True, selection="global",
                    selection_scores="authors", authors_stabiliser=True)


def _authors_case(seed=0):
    """4 blocks of 32; example 0: the last block empty and holes; example 1: partly padded last block.
    Half the heads' queries and keys point in opposite directions, so their real logits sit near -8
    and the padded keys' logit 0 sets the authors' row max (where their +1e-6 shows)."""
    rng = np.random.default_rng(seed)
    b, n, h, d = 2, 128, 2, 4
    q, k, v = (rng.normal(size=(b, n, h, d)) for _ in range(3))
    direction = np.array([1.0, 1.0, 0.0, 0.0]) * 2.83  # q.k / sqrt(d) ~ -8
    q[:, :, 1] = 0.3 * q[:, :, 1] + direction
    k[:, :, 1] = 0.3 * k[:, :, 1] - direction
    mask = np.ones((b, n), bool)
    mask[0, 96:] = False
    mask[0, [3, 40, 41, 77]] = False
    mask[1, 110:] = False
    return q, k, v, mask


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_authors_form_flags_reproduce_the_released_mra2_on_padding_and_holes(mode):
    """budget_from=input, row_max_over_empty_blocks, selection=global, selection_scores=authors and
    authors_stabiliser equal the authors' computation in float64 (1e-9) with priors (1, 1), whose
    forced blocks (10) exceed the budget (8); the default form differs on these padded inputs."""
    q, k, v, mask = _authors_case()
    priors = dict(initial_prior_first_n_blocks=1, initial_prior_diagonal_n_blocks=1)
    with jax.enable_x64(True):
        ours = _run(q, k, v, mask, block_per_row=2, approx_mode=mode, **priors, **AUTHORS_FORM)
        default = _run(q, k, v, mask, block_per_row=2, approx_mode=mode, **priors,
                       **{**AUTHORS_FORM, "authors_stabiliser": False})
    reference = authors_mra2(q, k, v, mask, num_blocks=8, mode=mode, first_n=1, diag_n=1)
    real = mask[:, :, None, None]
    np.testing.assert_allclose(ours * real, reference * real, rtol=1e-9, atol=1e-12)
    assert np.abs((default - reference) * real).max() > 1e-5 * np.abs(reference * real).max()


def test_authors_scores_boost_a_block_once_per_prior_set():
    """Priors (1, 1) on 4 blocks force 10 pairs into a budget of 8. The authors add 5e3 per set, so
    (0, 0) (diagonal, first row and first column) always survives; one boost per forced block lets
    the low-resolution logits decide, and a low L(0, 0) drops it."""
    logits = np.random.default_rng(5).normal(size=(1, 1, 4, 4))
    logits[0, 0, 0, 0] = -5.0
    counts = jnp.full((1, 4), 32.0)
    picked = {}
    for form in ("ranked", "authors"):
        scores, _ = selection_scores(jnp.asarray(logits), counts, first_n=1, diagonal_n=1, scores_form=form)
        rows, cols, _ = select_blocks(scores, counts, 2, budget_from="input")
        picked[form] = set(zip(np.asarray(rows).ravel().tolist(), np.asarray(cols).ravel().tolist()))
    assert (0, 0) in picked["authors"] and (0, 0) not in picked["ranked"]
    assert len(picked["authors"]) == len(picked["ranked"]) == 8

"""Retrieval (AAN): TSV reader, byte encoding, cache rows, dual encoder, and a tiny training run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.softmax import SoftmaxAttention
from lra.data.batches import eval_batches
from lra.data.encodings import encode_bytes
from lra.data.retrieval import RELEASE_COUNTS, AANFormatError, encode_pair, load_retrieval, read_aan_tsv
from lra.model import DualEncoder
from tests.conftest import compose_tiny
from tests.lra_fixtures import aan_line, write_aan_files

L = 48  # bytes per document in these tests


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("aan")
    written = write_aan_files(root / "tsv_data", counts=(24, 10, 9))
    return root, written


def test_bytes_plus_one_with_exact_offsets():
    ids = encode_bytes("aé\tz".encode())  # é is two UTF-8 bytes: 0xC3 0xA9
    assert ids.tolist() == [0x61 + 1, 0xC3 + 1, 0xA9 + 1, 0x09 + 1, 0x7A + 1] and ids.dtype == np.uint16
    row = encode_pair(b"abc", b"\xff" * 10, max_length=5, content_length=4)
    # doc 1 at [0, 5) padded with 0; doc 2 from offset 5, cut to content_length 4
    assert row.tolist() == [98, 99, 100, 0, 0, 256, 256, 256, 256]
    assert encode_pair(b"abcdefg", b"", max_length=4).tolist() == [98, 99, 100, 101]


def test_reader_accepts_the_release_columns_and_float_labels(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(aan_line("1.0", "left doc", "right doc") + aan_line("0", "x", "y"), encoding="utf-8")
    assert list(read_aan_tsv(path)) == [(1, b"left doc", b"right doc"), (0, b"x", b"y")]
    assert len(list(read_aan_tsv(path, limit=1))) == 1


@pytest.mark.parametrize("line,problem", [
    ("1\tP\tQ\tonly four columns\n", "expected 5 tab-separated columns"),
    ("1\tP\tQ\ta\tb\textra tab\n", "expected 5 tab-separated columns"),
    ("2\tP\tQ\ta\tb\n", "label '2' is not 0 or 1"),
    ("yes\tP\tQ\ta\tb\n", "label 'yes' is not 0 or 1"),
])
def test_malformed_lines_name_file_and_line_and_leave_no_cache(release, tmp_path, line, problem):
    root, _ = release
    bad = tmp_path / "release" / "tsv_data"
    bad.mkdir(parents=True)
    for name in ("train", "eval", "test"):
        (bad / f"new_aan_pairs.{name}.tsv").write_bytes((root / "tsv_data" / f"new_aan_pairs.{name}.tsv").read_bytes())
    with open(bad / "new_aan_pairs.eval.tsv", "a", encoding="utf-8") as f:
        f.write(line)
    cfg = {"name": "retrieval", "max_length": L, "release_dir": str(tmp_path / "release")}
    with pytest.raises(AANFormatError, match=rf"new_aan_pairs\.eval\.tsv:11: {problem}"):
        load_retrieval(cfg, tmp_path / "data", progress=False)
    assert [p.name for p in (tmp_path / "data" / "retrieval").iterdir()] == [".release-sha256.json"]


def test_missing_file_is_named(tmp_path):
    (tmp_path / "tsv_data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"new_aan_pairs\.train\.tsv \(split train\) not found"):
        load_retrieval({"name": "retrieval", "max_length": L, "release_dir": str(tmp_path)}, tmp_path / "d")


def test_cache_rows_to_batches_end_to_end(release, tmp_path):
    root, written = release
    cfg = {"name": "retrieval", "max_length": L, "content_length": 40, "release_dir": str(root)}
    cache = load_retrieval(cfg, tmp_path / "data", progress=False)
    assert [len(cache[s]) for s in ("train", "val", "test")] == [24, 10, 9]
    assert cache.vocab_size == 257 and cache.manifest["params"]["max_length"] == L
    batch = next(eval_batches(cache["val"], 4, 2 * L))
    for row, labels, (label, text1, text2) in zip(batch["tokens"], batch["labels"], written["val"][:4]):
        one, two = text1.encode()[:40], text2.encode()[:40]
        assert row[: len(one)].tolist() == [b + 1 for b in one] and not row[len(one):L].any()
        assert row[L:L + len(two)].tolist() == [b + 1 for b in two] and not row[L + len(two):].any()
        assert labels == label
    assert load_retrieval(cfg, tmp_path / "data", progress=False).directory == cache.directory  # reused
    small = load_retrieval({**cfg, "read_limit": 3}, tmp_path / "data", progress=False)
    assert [len(small[s]) for s in ("train", "val", "test")] == [3, 3, 3]


def test_release_counts_match_the_task_config(tmp_path):
    cfg = compose_tiny(tmp_path, "task=retrieval")
    assert dict(cfg.task.expected_counts) == RELEASE_COUNTS


def _dual(interaction, head_layers, seed=0):
    return DualEncoder(vocab_size=257, num_classes=2, max_length=8, attention=SoftmaxAttention, emb_dim=16,
                       num_heads=2, qkv_dim=16, mlp_dim=12, num_layers=1, pooling="mean",
                       interaction=interaction, head_layers=head_layers, dropout_rate=0.0,
                       attention_dropout_rate=0.0, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def duals():
    return _dual("concat", 2), _dual("nli", 1)


def test_dual_encoder_head_shapes_follow_interaction_and_layers(duals):
    official, lineage = duals  # [u, v] -> 12 -> 6 -> 2;  [u, v, uv, u-v] -> 12 -> 2
    assert [tuple(layer.kernel.shape) for layer in official.head_hidden] == [(32, 12), (12, 6)]
    assert [tuple(layer.kernel.shape) for layer in lineage.head_hidden] == [(64, 12)]
    assert official.head_out.kernel.shape == (6, 2) and not hasattr(official.tower, "head_out")
    with pytest.raises(ValueError, match="interaction must be 'concat' or 'nli'"):
        DualEncoder(num_classes=2, max_length=8, interaction="dot", rngs=nnx.Rngs(0))


def test_dual_encoder_encodes_each_document_alone_with_one_shared_tower(duals):
    model = duals[1]
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 1, 257).at[:, 13:].set(0)
    swapped = jnp.concatenate([tokens[:, 8:], tokens[:, :8]], axis=1)

    @nnx.jit
    def both(m, t, s):
        # Reference: each document through the one tower on its own (positions restart at 0).
        u, v = (m.tower.pool(*m.tower.encode(t[:, a:a + 8], deterministic=True)) for a in (0, 8))
        h = jnp.concatenate([u, v, u * v, u - v], -1)
        for layer in m.head_hidden:
            h = jax.nn.relu(layer(h))
        return m(t, deterministic=True), m.head_out(h), m(s, deterministic=True)

    logits, reference, swapped_logits = both(model, tokens, swapped)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(swapped_logits, logits)  # u - v: the order of the pair matters to the head
    with pytest.raises(ValueError, match="rows of 2 x 8"):
        model(tokens[:, :12], deterministic=True)


@pytest.mark.parametrize("interaction", ["concat", pytest.param("nli", marks=pytest.mark.slow)])
def test_tiny_training_run(release, tmp_path, interaction):
    from lra.train import run

    root, _ = release
    cfg = compose_tiny(tmp_path, "task=retrieval", f"task.release_dir={root}", f"task.max_length={L}",
                       f"model.interaction={interaction}")
    record = run(cfg)
    assert record["task"] == "retrieval" and record["model_config"]["interaction"] == interaction
    assert record["test_examples"] == 9 and record["val_examples"] == 10  # every pair scored once
    assert np.isfinite(record["train_loss_final"]) and record["max_length"] == L

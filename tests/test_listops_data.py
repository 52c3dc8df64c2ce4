"""Tests for lra.data.listops and lra.data.listops_generator: semantics, generator, tokenizers, TSV reader, cached loading.

The evaluators below are written independently of the generator: they parse the
official serialised string, one by folding the parenthesised pairs, one with a
flat stack that ignores parentheses.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from lra.data import listops as L
from lra.data import listops_generator as G
from lra.data.token_cache import CacheError, read_cache

SMALL = {"min_length": 20, "max_length": 200}
OPS = {"[MIN", "[MAX", "[MED", "[SM"}


# --------------------------------------------------------------------------- #
# Independent evaluators
# --------------------------------------------------------------------------- #


def _op_value(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise AssertionError(op)


def eval_stack(expr: str) -> int:
    """Flat stack machine: operators open a frame, ']' closes it; parentheses ignored."""
    frames: list[tuple[str, list[int]]] = []
    result = None
    for tok in expr.split():
        if tok in ("(", ")"):
            continue
        if tok in OPS:
            frames.append((tok, []))
        elif tok == "]":
            op, args = frames.pop()
            v = _op_value(op, args)
            if frames:
                frames[-1][1].append(v)
            else:
                assert result is None
                result = v
        else:
            assert tok.isdigit() and len(tok) == 1, tok
            if frames:
                frames[-1][1].append(int(tok))
            else:
                assert result is None
                result = int(tok)
    assert not frames and result is not None
    return result


def _parse_pairs(tokens: list[str], pos: int):
    """Parse '( a b )' into a 2-tuple recursively; atoms are strings."""
    if tokens[pos] != "(":
        return tokens[pos], pos + 1
    left, pos = _parse_pairs(tokens, pos + 1)
    right, pos = _parse_pairs(tokens, pos)
    assert tokens[pos] == ")", f"expected ) at {pos}"
    return (left, right), pos + 1


def eval_pairs(expr: str) -> int:
    """Fold the curried pair structure: (op a) starts a list, (l b) appends, (l ]) applies."""
    tokens = expr.split()
    tree, end = _parse_pairs(tokens, 0)
    assert end == len(tokens)

    def fold(t):
        if isinstance(t, str):
            return t if t in OPS or t == "]" else int(t)
        left, right = fold(t[0]), fold(t[1])
        if isinstance(left, str):  # (op first)
            assert left in OPS and isinstance(right, int)
            return (left, [right])
        assert isinstance(left, tuple)
        if right == "]":
            return _op_value(left[0], left[1])
        assert isinstance(right, int)
        return (left[0], left[1] + [right])

    v = fold(tree)
    assert isinstance(v, int)
    return v


def official_length(expr: str) -> int:
    return sum(tok not in ("(", ")") for tok in expr.split())


# --------------------------------------------------------------------------- #
# Semantics, hand-written
# --------------------------------------------------------------------------- #

HAND = [
    # (official serialisation, tokenized form, value)
    ("( ( ( [MAX 2 ) 9 ) ] )", "[MAX 2 9 X", 9),
    ("( ( ( [MIN 7 ) 3 ) ] )", "[MIN 7 3 X", 3),
    ("( ( ( [MED 1 ) 2 ) ] )", "[MED 1 2 X", 1),  # 1.5 truncated
    ("( ( ( ( ( [MED 3 ) 8 ) 1 ) 2 ) ] )", "[MED 3 8 1 2 X", 2),  # (2 + 3) / 2 = 2.5 -> 2
    ("( ( ( ( [MED 9 ) 0 ) 4 ) ] )", "[MED 9 0 4 X", 4),
    ("( ( ( ( [SM 9 ) 8 ) 7 ) ] )", "[SM 9 8 7 X", 4),  # 24 mod 10
    ("( ( ( [SM 5 ) 5 ) ] )", "[SM 5 5 X", 0),
    (
        "( ( ( ( ( ( ( [MAX 4 ) 3 ) ( ( ( [MIN 2 ) 3 ) ] ) ) 1 ) 0 ) "
        "( ( ( ( ( ( [MED 1 ) 5 ) 8 ) 9 ) 2 ) ] ) ) ] )",
        "[MAX 4 3 [MIN 2 3 X 1 0 [MED 1 5 8 9 2 X X",
        5,
    ),
    (
        "( ( ( [SM ( ( ( [MAX 9 ) 8 ) ] ) ) ( ( ( [MED 7 ) 6 ) ] ) ) ] )",
        "[SM [MAX 9 8 X [MED 7 6 X X",
        5,  # 9 + 6 = 15 -> 5
    ),
]


@pytest.mark.parametrize("expr,tokenized,value", HAND)
def test_hand_written_cases(expr, tokenized, value):
    assert eval_stack(expr) == value
    assert eval_pairs(expr) == value
    ids = L.encode(expr)
    assert L.decode(ids) == tokenized
    assert G.to_expression(ids) == expr


def test_to_expression_input_checks():
    assert G.to_expression([12, 3, 10, 11, 0, 0]) == "( ( ( [MAX 2 ) 9 ) ] )"  # padding ignored
    assert G.to_expression([8]) == "7"
    for bad in ([12, 3, 10], [3, 4], [11], [12, 3, 11, 11], [16, 3, 11]):
        with pytest.raises(ValueError):
            G.to_expression(bad)


def test_apply_operator():
    assert G.apply_operator("[MED", [1, 2]) == 1
    assert G.apply_operator("[MED", [3, 8, 1, 2]) == 2
    assert G.apply_operator("[MED", [0, 9, 9, 9]) == 9
    assert G.apply_operator("[MED", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) == 4
    assert G.apply_operator("[SM", [9, 9, 9]) == 7
    assert G.apply_operator("[MIN", [4, 2, 8]) == 2
    assert G.apply_operator("[MAX", [4, 2, 8]) == 8
    with pytest.raises(ValueError):
        G.apply_operator("[FIRST", [1])
    for args in ([1, 2], [5, 0, 7, 7], [9, 8, 1, 0, 2, 2], [3, 4, 4, 5, 6]):
        assert G.apply_operator("[MED", args) == int(np.median(args))


# --------------------------------------------------------------------------- #
# Tokenizers
# --------------------------------------------------------------------------- #


def test_fixed_vocab():
    expected = ["<pad>", *"0123456789", "X", "[MAX", "[MED", "[MIN", "[SM", "<unk>"]
    assert list(L.VOCAB) == expected
    assert L.vocab_for("fixed") == expected and len(expected) == 17
    assert L.vocab_for("legacy_alnum") == ["<pad>", *"0123456789", "MAX", "MED", "MIN", "SM", "<unk>"]
    with pytest.raises(ValueError, match="tokenizer"):
        L.vocab_for("bpe")


def test_encode_ids_and_oov():
    np.testing.assert_array_equal(L.encode("( ( ( [MAX 2 ) 9 ) ] )"), [12, 3, 10, 11])
    assert L.encode("( ( ( [MAX 2 ) 9 ) ] )").dtype == np.uint8
    ids = L.encode("( ( [FIRST 2 ) ] )")
    np.testing.assert_array_equal(ids, [16, 3, 11])
    assert L.decode(ids) == "<unk> 2 X"
    assert L.decode(np.array([12, 3, 11, 0, 0])) == "[MAX 2 X"  # padding dropped
    with pytest.raises(ValueError):
        L.decode([17])


def test_round_trip_on_generated():
    data = G.generate_listops(60, 0, 0, seed=5, workers=1, progress=False, **SMALL)
    for seq in data["train"][0]:
        expr = G.to_expression(seq)
        ids = L.encode(expr)
        np.testing.assert_array_equal(ids, seq)
        tokenized = expr.replace("(", " ").replace(")", " ").replace("]", "X").split()
        assert L.decode(ids) == " ".join(tokenized)
        assert L.tokenize(L.decode(ids)) == tokenized  # tokenized form is a fixed point
        np.testing.assert_array_equal(L.encode(L.decode(ids)), ids)


def test_legacy_tokenizer_drops_brackets():
    expr = HAND[-2][0]  # [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]
    assert L.tokenize(expr, "legacy_alnum") == "MAX 4 3 MIN 2 3 1 0 MED 1 5 8 9 2".split()
    ids = L.encode(expr, "legacy_alnum")
    assert L.decode(ids, "legacy_alnum") == "MAX 4 3 MIN 2 3 1 0 MED 1 5 8 9 2"
    assert len(ids) == len(L.encode(expr)) - 3  # the three ']' are gone
    assert ids.max() < len(L.LEGACY_VOCAB) - 1  # no OOV
    # two different trees become the same sequence: the structure is lost
    a = "( ( ( [MAX ( ( ( [MIN 1 ) 2 ) ] ) ) 3 ) ] )"  # MAX(MIN(1,2),3) = 3
    b = "( ( ( ( [MAX ( ( ( [MIN 1 ) 2 ) ) 3 ) ] ) ) ] )"  # MAX(MIN(1,2,3)) = 1
    assert eval_stack(a) != eval_stack(b)
    np.testing.assert_array_equal(L.encode(a, "legacy_alnum"), L.encode(b, "legacy_alnum"))
    assert not np.array_equal(L.encode(a), L.encode(b))


# --------------------------------------------------------------------------- #
# Generator
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def small_data():
    return G.generate_listops(300, 20, 20, seed=0, workers=1, progress=False, **SMALL)


def test_generator_semantics_and_lengths(small_data):
    n = 0
    for seqs, labels in small_data.values():
        assert labels.dtype == np.int32
        for seq, label in zip(seqs, labels.tolist()):
            expr = G.to_expression(seq)
            assert eval_stack(expr) == label
            assert eval_pairs(expr) == label
            length = official_length(expr)
            assert length == len(seq)
            assert SMALL["min_length"] < length < SMALL["max_length"]
            n += 1
    assert n == 340


def test_generator_default_lengths_and_depth():
    data = G.generate_listops(30, 0, 0, seed=1, workers=1, progress=False)
    seqs, labels = data["train"]
    for seq, label in zip(seqs, labels.tolist()):
        expr = G.to_expression(seq)
        assert 500 < official_length(expr) < 2000
        assert eval_stack(expr) == label
        depth = max_depth = 0
        for tok in L.decode(seq).split():
            depth += tok in OPS
            depth -= tok == "X"
            max_depth = max(max_depth, depth)
        assert max_depth <= 9  # operators live at depths 1..9, leaves up to 10
        assert 2 <= max(_arities(L.decode(seq))) <= 10


def _arities(tokenized: str) -> list[int]:
    stack, done = [], []
    for tok in tokenized.split():
        if stack and tok != "X":
            stack[-1] += 1
        if tok in OPS:
            stack.append(0)
        elif tok == "X":
            done.append(stack.pop())
    return done


def test_max_args_and_depth_respected():
    data = G.generate_listops(100, 0, 0, seed=2, workers=1, progress=False,
                              max_depth=4, max_args=3, min_length=5, max_length=60)  # fmt: skip
    for seq in data["train"][0]:
        tokenized = L.decode(seq)
        assert all(2 <= a <= 3 for a in _arities(tokenized))
        depth = max_depth = 0
        for tok in tokenized.split():
            depth += tok in OPS
            depth -= tok == "X"
            max_depth = max(max_depth, depth)
        assert max_depth <= 3


def _flatten(data):
    return [(s, (seq.tobytes(), int(lab))) for s, (seqs, labs) in data.items() for seq, lab in zip(seqs, labs)]


def test_split_sizes_and_no_duplicates(small_data):
    assert [len(small_data[s][0]) for s in L.SPLITS] == [300, 20, 20]
    assert [len(small_data[s][1]) for s in L.SPLITS] == [300, 20, 20]
    keys = [k for _, (k, _) in _flatten(small_data)]
    assert len(set(keys)) == len(keys)


def test_dedupe_with_many_collisions():
    # max_depth 2: a root operator over 2 or 3 leaves -> only 4 * (100 + 1000) distinct trees
    kw = dict(seed=3, max_depth=2, max_args=3, min_length=3, max_length=6, workers=1, progress=False)
    data = G.generate_listops(1500, 100, 100, **kw)
    keys = [k for _, (k, _) in _flatten(data)]
    assert len(keys) == 1700 and len(set(keys)) == 1700
    again = G.generate_listops(1500, 100, 100, **kw)
    assert _flatten(again) == _flatten(data)
    with pytest.raises(RuntimeError, match="distinct trees"):
        G.generate_listops(5000, 0, 0, **kw)


def test_deterministic_across_runs_and_workers(small_data):
    again = G.generate_listops(300, 20, 20, seed=0, workers=1, progress=False, **SMALL)
    assert _flatten(again) == _flatten(small_data)
    parallel = G.generate_listops(300, 20, 20, seed=0, workers=2, progress=False, **SMALL)
    assert _flatten(parallel) == _flatten(small_data)
    other = G.generate_listops(300, 20, 20, seed=1, workers=1, progress=False, **SMALL)
    assert not set(k for _, (k, _) in _flatten(other)) & set(k for _, (k, _) in _flatten(small_data))


def test_labels_cover_all_classes(small_data):
    labels = np.concatenate([small_data[s][1] for s in L.SPLITS])
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and (counts > 0).all(), counts


# --------------------------------------------------------------------------- #
# Release TSV reader
# --------------------------------------------------------------------------- #


def test_tsv_round_trip(tmp_path):
    path = tmp_path / "basic_train.tsv"
    exprs = [h[0] for h in HAND]
    L.write_listops_tsv(path, exprs, [h[2] for h in HAND])
    assert path.read_text().splitlines()[0] == "Source\tTarget"
    got, labels = L.read_listops_tsv(path)
    assert got == exprs
    np.testing.assert_array_equal(labels, [h[2] for h in HAND])
    assert labels.dtype == np.int32


GOOD = "( ( ( [MAX 2 ) 9 ) ] )"


@pytest.mark.parametrize(
    "content,line,what",
    [
        (f"{GOOD}\t9\n", 1, "header"),  # header missing
        (f"Src\tTarget\n{GOOD}\t9\n", 1, "header"),
        ("", 1, "empty"),
        (f"Source\tTarget\n{GOOD}\t9\n{GOOD}\n", 3, "2 tab-separated columns"),
        (f"Source\tTarget\n{GOOD}\t9\n{GOOD}\t9\t1\n", 3, "found 3"),
        (f"Source\tTarget\n{GOOD}\t9\n{GOOD}\tnine\n", 3, "not an integer"),
        (f"Source\tTarget\n{GOOD}\t10\n", 2, "not an integer in 0..9"),
        (f"Source\tTarget\n{GOOD}\t-1\n", 2, "not an integer"),
        (f"Source\tTarget\n{GOOD}\t\n", 2, "not an integer"),
        (f"Source\tTarget\n{GOOD}\t3\n \t3\n", 3, "empty expression"),
        (f"Source\tTarget\n{GOOD}\t3\n\n{GOOD}\t3\n", 3, "empty line"),
    ],
)
def test_malformed_tsv(tmp_path, content, line, what):
    path = tmp_path / "basic_val.tsv"
    path.write_text(content)
    with pytest.raises(L.ListOpsFormatError) as err:
        L.read_listops_tsv(path)
    msg = str(err.value)
    assert f"{path}:{line}:" in msg, msg
    assert what in msg, msg


def test_crlf_lines_are_accepted(tmp_path):
    path = tmp_path / "basic_val.tsv"
    path.write_bytes(f"Source\tTarget\r\n{GOOD}\t9\r\n".encode())
    exprs, labels = L.read_listops_tsv(path)
    assert exprs == [GOOD] and labels.tolist() == [9]


# --------------------------------------------------------------------------- #
# load_listops
# --------------------------------------------------------------------------- #


def _cfg(source="generator", release_dir=None, tokenizer="fixed", **gen):
    g = {"seed": 0, "num_train": 300, "num_val": 20, "num_test": 20, "max_depth": 10, "max_args": 10, **SMALL}
    g.update(gen)
    g.setdefault("workers", 1)
    return {"name": "listops", "source": source, "release_dir": release_dir, "tokenizer": tokenizer, "generator": g}


def _write_release(cache, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in L.SPLITS:
        sp = cache[split]
        exprs = [G.to_expression(sp.sequence(i)) for i in range(len(sp))]
        L.write_listops_tsv(folder / L.RELEASE_FILES[split], exprs, sp.labels)


def test_load_generator_cache(tmp_path, small_data):
    cache = L.load_listops(_cfg(), tmp_path, progress=False)
    assert cache.directory.parent == tmp_path / "listops"
    assert cache.directory.name.startswith("gen-seed0-fixed-")
    assert cache.vocab == list(L.VOCAB)
    m = cache.manifest
    assert m["task"] == "listops" and m["tokenizer"] == {"name": "fixed", "version": 1}
    assert m["params"]["generator"]["num_train"] == 300
    assert {s: m["splits"][s]["count"] for s in L.SPLITS} == {"train": 300, "val": 20, "test": 20}
    for split in L.SPLITS:
        seqs, labels = small_data[split]
        sp = cache[split]
        np.testing.assert_array_equal(sp.labels, labels)
        for i in range(len(sp)):
            np.testing.assert_array_equal(sp.sequence(i), seqs[i])
    read_cache(cache.directory, verify=True)


def test_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    first = L.load_listops(_cfg(), tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(L, "generate_listops", boom)
    again = L.load_listops(_cfg(workers=3), tmp_path, progress=False)  # workers do not change content
    assert again.directory == first.directory
    for change in ({"seed": 1}, {"num_val": 21}, {"max_length": 201}, {"max_args": 9}):
        with pytest.raises(AssertionError, match="regenerated"):
            L.load_listops(_cfg(**change), tmp_path, progress=False)
    with pytest.raises(AssertionError, match="regenerated"):
        L.load_listops(_cfg(tokenizer="legacy_alnum"), tmp_path, progress=False)


def test_both_sources_agree(tmp_path):
    for tokenizer in ("fixed", "legacy_alnum"):
        gen = L.load_listops(_cfg(tokenizer=tokenizer), tmp_path / "gen", progress=False)
        if tokenizer == "fixed":
            fixed_gen = gen
            _write_release(gen, tmp_path / "release")
        rel = L.load_listops(_cfg("release", tmp_path / "release", tokenizer), tmp_path / "rel", progress=False)
        assert rel.directory.name.startswith(f"release-{tokenizer}-")
        assert rel.vocab == gen.vocab == L.vocab_for(tokenizer)
        for split in L.SPLITS:
            g, r = gen[split], rel[split]
            assert len(g) == len(r) > 0
            np.testing.assert_array_equal(g.labels, r.labels)
            np.testing.assert_array_equal(g.offsets, r.offsets)
            np.testing.assert_array_equal(g.tokens, r.tokens)
            assert g.tokens.dtype == r.tokens.dtype == np.uint8
    # the legacy cache really dropped the brackets
    assert len(gen["train"].tokens) < len(fixed_gen["train"].tokens)
    assert rel.manifest["params"]["files"]["train"]["sha256"]


def test_release_key_follows_file_content(tmp_path):
    gen = L.load_listops(_cfg(), tmp_path / "gen", progress=False)
    folder = tmp_path / "lra_release" / "listops-1000"
    _write_release(gen, folder)
    a = L.load_listops(_cfg("release", folder), tmp_path / "c", progress=False)
    b = L.load_listops(_cfg("release", tmp_path), tmp_path / "c", progress=False)  # archive root is found too
    assert a.directory == b.directory
    path = folder / "basic_test.tsv"
    lines = path.read_text().splitlines()
    expr, label = lines[1].split("\t")
    lines[1] = f"{expr}\t{(int(label) + 1) % 10}"
    st = path.stat()
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse-mtime filesystems
    c = L.load_listops(_cfg("release", folder), tmp_path / "c", progress=False)
    assert c.directory != a.directory
    assert c["test"].labels[0] == (a["test"].labels[0] + 1) % 10


def test_release_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="lra_release.gz") as err:
        L.load_listops(_cfg("release", tmp_path / "absent"), tmp_path / "c", progress=False)
    assert str(tmp_path / "absent") in str(err.value)
    with pytest.raises(FileNotFoundError, match="release_dir"):
        L.load_listops(_cfg("release", None), tmp_path / "c", progress=False)
    folder = tmp_path / "listops-1000"
    folder.mkdir()
    L.write_listops_tsv(folder / "basic_train.tsv", [GOOD], [9])
    L.write_listops_tsv(folder / "basic_val.tsv", [GOOD], [9])
    with pytest.raises(FileNotFoundError, match="basic_test.tsv") as err:
        L.load_listops(_cfg("release", folder), tmp_path / "c", progress=False)
    assert str(folder / "basic_test.tsv") in str(err.value) and "lra_release.gz" in str(err.value)


def test_release_malformed_file_leaves_no_cache(tmp_path):
    folder = tmp_path / "listops-1000"
    folder.mkdir()
    for split in L.SPLITS:
        L.write_listops_tsv(folder / L.RELEASE_FILES[split], [GOOD, GOOD], [9, 9])
    (folder / "basic_val.tsv").write_text(f"Source\tTarget\n{GOOD}\t9\n{GOOD}\t12\n")
    with pytest.raises(L.ListOpsFormatError, match="basic_val.tsv:3:"):
        L.load_listops(_cfg("release", folder), tmp_path / "c", progress=False)
    assert [p.name for p in (tmp_path / "c" / "listops").iterdir() if not p.name.startswith(".")] == []


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown ListOps generator options"):
        L.load_listops(_cfg(max_dept=3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        L.load_listops(_cfg(tokenizer="bpe"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="source"):
        L.load_listops({**_cfg(), "source": "tfds"}, tmp_path, progress=False)
    with pytest.raises(ValueError, match="task"):
        L.load_listops({**_cfg(), "name": "text"}, tmp_path, progress=False)


def test_damaged_cache_is_reported(tmp_path):
    cache = L.load_listops(_cfg(), tmp_path, progress=False)
    (cache.directory / "manifest.json").unlink()
    with pytest.raises(CacheError, match=str(cache.directory)):
        L.load_listops(_cfg(), tmp_path, progress=False)


@pytest.mark.slow
def test_full_default_generation(tmp_path):
    cfg = {"name": "listops", "source": "generator", "release_dir": None, "tokenizer": "fixed",
           "generator": dict(G.DEFAULT_GENERATOR)}  # fmt: skip
    t0 = time.perf_counter()
    cache = L.load_listops(cfg, tmp_path, progress=False)
    elapsed = time.perf_counter() - t0
    assert {s: len(cache[s]) for s in L.SPLITS} == {"train": 96_000, "val": 2_000, "test": 2_000}
    for s in L.SPLITS:
        lengths = cache[s].lengths
        assert lengths.min() > 500 and lengths.max() < 2000
        assert np.bincount(cache[s].labels, minlength=10).size == 10
    size = sum(p.stat().st_size for p in cache.directory.iterdir())
    assert size < 200 * 2**20
    t1 = time.perf_counter()
    reread = L.load_listops(cfg, tmp_path, progress=False)
    reload_s = time.perf_counter() - t1
    assert reload_s < 1.0
    keys = set()
    for s in L.SPLITS:
        sp = reread[s]
        for i in range(len(sp)):
            keys.add(sp.sequence(i).tobytes())
    assert len(keys) == 100_000
    print(f"\nfull ListOps: generate+write {elapsed:.1f} s, reload {reload_s * 1e3:.1f} ms, "
          f"cache {size / 2**20:.1f} MiB")  # fmt: skip

"""ListOps: the LRA task of evaluating long nested list-operation expressions.

The task
--------
Each example is a prefix expression over the digits 0-9 built from four
operators, and the label (10 classes) is its value::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->   5

Operators (the LRA generator's set; the paper says MEAN where the code has MIN):

=======  ==========================================================
``MIN``  smallest argument
``MAX``  largest argument
``MED``  ``int(median)``: for an even count, the mean of the two
         middle values, truncated toward zero (the values are >= 0)
``SM``   sum of the arguments modulo 10
=======  ==========================================================

Grammar and serialisation
-------------------------
The defaults follow the LRA generator, ``lra_benchmarks/data/listops.py`` in
``google-research/long-range-arena``.  A tree is drawn top-down with the root
at depth 1.  A node at the maximum depth (10) is a leaf; any other node is a
leaf with probability 0.75 (the generator draws ``r ~ U(0, 1)`` and makes a
leaf when ``r > VALUE_P = 0.25``), otherwise an operator node with between 2
and ``max_args`` (10) children, inclusive.  A leaf is a uniform digit.  An
operator node picks its operator uniformly among MIN, MAX, MED, SM *after*
its children have been drawn.

Nodes are written as curried pairs, each pair in parentheses, so
``[MAX 2 9 ]`` is serialised as ``( ( ( [MAX 2 ) 9 ) ] )``.  An expression's
length counts operators, values and closing ``]`` but not parentheses; a tree
is kept only when ``min_length < length < max_length`` strictly (501..1999
tokens with the defaults 500 / 2000).  Files are TSVs with the header
``Source<TAB>Target``; the LRA release calls them
``listops-1000/basic_{train,val,test}.tsv``.  Split sizes default to
96,000 / 2,000 / 2,000.

Tokenisation
------------
``fixed`` (default) is what the official input pipeline does since commit
c209b2a (``lra_benchmarks/listops/input_pipeline.py``): ``]`` becomes ``X``,
``(`` and ``)`` are deleted, and the rest is split on whitespace, which leaves
15 distinct tokens.  Ids here are 0 = ``<pad>``, 1..15 = the 15 tokens in
sorted order (``0``..``9``, ``X``, ``[MAX``, ``[MED``, ``[MIN``, ``[SM``),
16 = ``<unk>``; vocab size 17, as in the official pipeline.

``legacy_alnum`` reproduces the earlier tokenizer (before c209b2a, still
vendored by some PyTorch harnesses): it keeps only alphanumeric runs, so every
bracket is lost and the tree structure cannot be recovered (harness quirk
**D2**).  Off by default; results obtained with it must be labelled.  Its
vocab is likewise fixed and sorted: ``<pad>``, ``0``..``9``, ``MAX``, ``MED``,
``MIN``, ``SM``, ``<unk>`` (16 ids).

Deviations from the LRA code (all deliberate)
---------------------------------------------
* The generator is seeded (numpy ``SeedSequence``, one child stream per chunk
  of trees) and gives byte-identical output for a seed whatever the number of
  worker processes.  The LRA generator sets no seed, so regenerated data
  differs from the released TSVs anyway.  The operator is still drawn after
  the children, as in the LRA code, although with a different random stream
  the order does not change the distribution of trees.
* Trees that grow past ``max_length`` are abandoned as soon as that is
  certain; they would have been rejected anyway, so the distribution of kept
  trees is unchanged.
* De-duplication keeps the first occurrence in generation order (the LRA code
  uses a Python ``set``, whose iteration order then decides the split); the
  first ``num_train`` unique trees are train, the next ``num_val`` val and the
  next ``num_test`` test, so no expression is in two splits.
* The vocabulary is the fixed sorted list above instead of being built with a
  ``set`` over validation examples, whose id order changes between processes
  (harness quirk **D3**).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.preparation import default_workers, progress_bar
from lra.data.lra_release import release_root
from lra.data.token_cache import (TokenCache, file_sha256, params_key, read_cache, read_matching_cache,
                                  write_cache)

__all__ = [
    "DEFAULT_GENERATOR",
    "LEGACY_VOCAB",
    "ListOpsFormatError",
    "OPERATORS",
    "RELEASE_FILES",
    "SPLITS",
    "TOKENIZERS",
    "VOCAB",
    "apply_operator",
    "cache_key",
    "decode",
    "encode",
    "generate_listops",
    "load_listops",
    "read_listops_tsv",
    "to_expression",
    "tokenize",
    "vocab_for",
    "write_listops_tsv",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
END = "]"
#: Operators in the LRA generator's order (the draw index maps into this list).
OPERATORS: tuple[str, ...] = (MIN, MAX, MED, SUM_MOD)
VALUE_P = 0.25

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Release file name of every split, inside ``lra_release/listops-1000/``.
RELEASE_FILES: dict[str, str] = {s: f"basic_{s}.tsv" for s in SPLITS}
TSV_HEADER = ("Source", "Target")
NUM_CLASSES = 10

DEFAULT_GENERATOR: dict[str, int] = {
    "seed": 0,
    "num_train": 96_000,
    "num_val": 2_000,
    "num_test": 2_000,
    "max_depth": 10,
    "max_args": 10,
    "min_length": 500,
    "max_length": 2_000,
}

PAD, UNK = "<pad>", "<unk>"
_DIGITS = [str(d) for d in range(10)]
#: ``fixed`` tokenizer vocab: index = id.
VOCAB: tuple[str, ...] = (PAD, *sorted(_DIGITS + ["X", MAX, MED, MIN, SUM_MOD]), UNK)
#: ``legacy_alnum`` tokenizer vocab: index = id.
LEGACY_VOCAB: tuple[str, ...] = (PAD, *sorted(_DIGITS + ["MAX", "MED", "MIN", "SM"]), UNK)

TOKENIZERS: dict[str, dict[str, Any]] = {
    "fixed": {"version": 1, "vocab": VOCAB},
    "legacy_alnum": {"version": 1, "vocab": LEGACY_VOCAB},
}

# Bumped whenever the generator's output for given parameters changes.
GENERATOR_VERSION = 1
# Accepted trees per chunk (one random stream per chunk).  Part of the
# algorithm: changing it changes the output for a seed.
_CHUNK_TREES = 256
_UNIFORM_BLOCK = 1 << 16
_MAX_BARREN_CHUNKS = 8

_FIXED_ID = {tok: i for i, tok in enumerate(VOCAB)}
_X_ID = _FIXED_ID["X"]
_DIGIT_IDS = [_FIXED_ID[d] for d in _DIGITS]
_OP_IDS = [_FIXED_ID[op] for op in OPERATORS]


class ListOpsFormatError(ValueError):
    """A ListOps TSV file is malformed (the message names file and line)."""


# --------------------------------------------------------------------------- #
# Semantics
# --------------------------------------------------------------------------- #


def apply_operator(op: str, values: Sequence[int]) -> int:
    """Value of operator ``op`` (``"[MIN"``, ``"[MAX"``, ``"[MED"``, ``"[SM"``) on ``values``."""
    if not values:
        raise ValueError(f"{op} needs at least one argument")
    if op == MIN:
        return min(values)
    if op == MAX:
        return max(values)
    if op == MED:
        s = sorted(values)
        m = len(s) // 2
        return s[m] if len(s) % 2 else int((s[m - 1] + s[m]) / 2)
    if op == SUM_MOD:
        return sum(values) % 10
    raise ValueError(f"unknown operator {op!r}")


# --------------------------------------------------------------------------- #
# Tokenizers
# --------------------------------------------------------------------------- #


class _Lookup(dict):
    """token -> id, with every unknown token mapped to the OOV id."""

    def __init__(self, vocab: Sequence[str]):
        super().__init__((tok, i) for i, tok in enumerate(vocab) if tok not in (PAD, UNK))
        self.unk = len(vocab) - 1

    def __missing__(self, key: str) -> int:
        return self.unk


_LOOKUPS = {name: _Lookup(spec["vocab"]) for name, spec in TOKENIZERS.items()}
_ALNUM = re.compile(r"[A-Za-z0-9]+")


def _check_tokenizer(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown ListOps tokenizer {tokenizer!r}; choose one of {sorted(TOKENIZERS)}")


def vocab_for(tokenizer: str = "fixed") -> list[str]:
    """The vocabulary of ``tokenizer`` (index = id; 0 = pad, last = OOV)."""
    _check_tokenizer(tokenizer)
    return list(TOKENIZERS[tokenizer]["vocab"])


def tokenize(expression: str, tokenizer: str = "fixed") -> list[str]:
    """Split an expression into token strings.

    ``fixed``: replace ``]`` by ``X``, delete ``(`` and ``)``, split on
    whitespace.  ``legacy_alnum``: keep only runs of ASCII letters and digits.
    """
    _check_tokenizer(tokenizer)
    if tokenizer == "fixed":
        return expression.replace("]", "X").replace("(", "").replace(")", "").split()
    return _ALNUM.findall(expression)


def encode(expression: str, tokenizer: str = "fixed") -> np.ndarray:
    """Token ids (``uint8``) of an expression; unknown tokens get the OOV id."""
    toks = tokenize(expression, tokenizer)
    return np.fromiter(map(_LOOKUPS[tokenizer].__getitem__, toks), dtype=np.uint8, count=len(toks))


def decode(ids: Sequence[int] | np.ndarray, tokenizer: str = "fixed") -> str:
    """The tokenized form of ``ids``, tokens joined by spaces; padding (id 0) is dropped."""
    vocab = vocab_for(tokenizer)
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if not 0 <= i < len(vocab):
            raise ValueError(f"id {i} outside the {tokenizer!r} vocab of size {len(vocab)}")
        if i:
            out.append(vocab[i])
    return " ".join(out)


def _legacy_id_of_fixed(tok: str) -> int:
    if tok in (PAD, "X"):  # X (a ']') is removed before mapping
        return 0
    if tok == UNK:
        return len(LEGACY_VOCAB) - 1
    return _LOOKUPS["legacy_alnum"][tok.lstrip("[")]


# fixed id -> legacy id, used to re-encode generator output.
_FIXED_TO_LEGACY = np.array([_legacy_id_of_fixed(t) for t in VOCAB], dtype=np.uint8)


def _from_fixed_ids(ids: np.ndarray, tokenizer: str) -> np.ndarray:
    """Re-encode canonical (``fixed``) ids of a generated tree for ``tokenizer``."""
    if tokenizer == "fixed":
        return ids
    mapped = _FIXED_TO_LEGACY[ids]
    return mapped[ids != _X_ID]


def to_expression(ids: Sequence[int] | np.ndarray) -> str:
    """Official serialisation of a tree given by its ``fixed`` token ids.

    ``[MAX 2 9 X`` (as ids) becomes ``( ( ( [MAX 2 ) 9 ) ] )``.  Padding
    (id 0) is ignored.
    """
    toks = [VOCAB[i] for i in np.asarray(ids).reshape(-1).tolist() if i]
    # First pass: number of children of every operator.
    arity: dict[int, int] = {}
    stack: list[int] = []
    for pos, tok in enumerate(toks):
        if not stack and pos:
            raise ValueError("not a single expression: tokens after the root is complete")
        if stack and tok != "X":
            arity[stack[-1]] += 1
        if tok.startswith("["):
            arity[pos] = 0
            stack.append(pos)
        elif tok == "X":
            if not stack:
                raise ValueError("unbalanced expression: X without an operator")
            stack.pop()
        elif tok not in _DIGITS:
            raise ValueError(f"token {tok!r} cannot be serialised")
    if stack:
        raise ValueError("unbalanced expression: operator without X")
    out: list[str] = []
    stack = []
    for pos, tok in enumerate(toks):
        if tok.startswith("["):
            out.append("( " * (arity[pos] + 1) + tok)
            stack.append(pos)
            continue
        if tok == "X":
            stack.pop()
            out.append("] )")
        else:
            out.append(tok)
        # A completed child closes the pair it was the right half of.
        if stack:
            out.append(")")
    return " ".join(out)


# --------------------------------------------------------------------------- #
# Generator
# --------------------------------------------------------------------------- #


def _uniform_stream(rng: np.random.Generator) -> Iterator[float]:
    while True:
        yield from rng.random(_UNIFORM_BLOCK).tolist()


def _draw_tree(draw, max_depth: int, max_args: int, max_length: int) -> tuple[list[int], int] | None:
    """Draw one tree; return (fixed ids in prefix order, value) or None once too long.

    Iterative depth-first version of the LRA recursion: a node at depth < max_depth
    is an operator when ``U(0,1) <= VALUE_P``; an operator draws its child count,
    then its children, then its operator.
    """
    toks: list[int] = []
    stack: list[list] = []  # open operators: [children still to draw, position of op token, child values]
    arg_span = max_args - 1
    while True:
        if len(stack) + 1 < max_depth and draw() <= VALUE_P:
            stack.append([2 + int(draw() * arg_span), len(toks), []])
            toks.append(0)  # placeholder for the operator, drawn after the children
            if len(toks) + len(stack) >= max_length:
                return None
            continue
        value = int(draw() * 10)
        toks.append(_DIGIT_IDS[value])
        while stack:
            frame = stack[-1]
            frame[2].append(value)
            frame[0] -= 1
            if frame[0]:
                break
            stack.pop()
            op = int(draw() * 4)
            value = apply_operator(OPERATORS[op], frame[2])
            toks[frame[1]] = _OP_IDS[op]
            toks.append(_X_ID)
        else:
            return toks, value
        # emitted tokens + one pending ']' per open operator is a lower bound on the length
        if len(toks) + len(stack) >= max_length:
            return None


def _generate_chunk(task: tuple[int, int, int, int, int, int, int]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Accepted trees of chunk ``index``: (concatenated fixed ids, lengths, labels)."""
    seed, index, count, max_depth, max_args, min_length, max_length = task
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))
    draw = _uniform_stream(rng).__next__
    flat = bytearray()
    lengths = np.empty(count, dtype=np.int64)
    labels = np.empty(count, dtype=np.uint8)
    n = 0
    while n < count:
        tree = _draw_tree(draw, max_depth, max_args, max_length)
        if tree is None:
            continue
        toks, value = tree
        if min_length < len(toks) < max_length:
            flat += bytes(toks)
            lengths[n] = len(toks)
            labels[n] = value
            n += 1
    return bytes(flat), lengths, labels




def generate_listops(
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    *,
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2_000,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Generate unique ListOps trees and split them into train / val / test.

    Returns ``{"train": (sequences, labels), "val": ..., "test": ...}`` where
    every sequence is the tree's ``fixed``-tokenizer ids (``uint8``; use
    :func:`to_expression` for the official string) and labels are ``int32``.

    Trees come in chunks of fixed size, chunk ``i`` drawn from
    ``SeedSequence(seed, spawn_key=(i,))``; chunks are consumed in index order
    and duplicates are dropped on first sight, so the result depends only on
    the parameters, not on ``workers`` (``None``: one per available CPU, at most
    16; ``1`` or ``0``: no subprocesses).  Subprocesses are started with
    ``spawn`` (safe after JAX has started threads), so a calling script needs
    the usual ``if __name__ == "__main__":`` guard.
    """
    for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    if max_depth < 2 or max_length - min_length < 2 or max_length <= 3:
        raise ValueError(
            f"no tree can satisfy min_length {min_length} < length < max_length {max_length} "
            f"with max_depth {max_depth}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    total = num_train + num_val + num_test
    workers = default_workers() if workers is None else workers

    unique: dict[bytes, tuple[np.ndarray, int]] = {}
    next_chunk = 0
    barren = 0  # consecutive chunks that added no new tree
    pool = None
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("ListOps: generating", total=total)
            while len(unique) < total:
                need = total - len(unique)
                n_chunks = -(-need // _CHUNK_TREES)
                tasks = [
                    (seed, i, _CHUNK_TREES, max_depth, max_args, min_length, max_length)
                    for i in range(next_chunk, next_chunk + n_chunks)
                ]
                next_chunk += n_chunks
                if workers > 1 and n_chunks > 1 and pool is None:
                    ctx = multiprocessing.get_context("spawn")
                    pool = ctx.Pool(min(workers, n_chunks))
                results = pool.imap(_generate_chunk, tasks) if pool is not None else map(_generate_chunk, tasks)
                for flat, lengths, labels in results:
                    buf = np.frombuffer(flat, dtype=np.uint8)
                    start = 0
                    before = len(unique)
                    for length, label in zip(lengths.tolist(), labels.tolist()):
                        seq = buf[start : start + length]
                        start += length
                        if len(unique) >= total:
                            break
                        key = seq.tobytes()
                        if key not in unique:
                            unique[key] = (seq, label)
                    bar.update(task, completed=len(unique))
                    if len(unique) >= total:
                        break
                    barren = barren + 1 if len(unique) == before else 0
                    if barren >= _MAX_BARREN_CHUNKS:
                        raise RuntimeError(
                            f"ListOps generator found only {len(unique)} distinct trees of the {total} requested "
                            f"({_MAX_BARREN_CHUNKS} chunks in a row added none): with max_depth {max_depth}, "
                            f"max_args {max_args} and {min_length} < length < {max_length} too few trees exist"
                        )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    items = list(unique.values())
    del unique
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val), "test": (num_train + num_val, total)}
    out = {}
    for split, (a, b) in bounds.items():
        part = items[a:b]
        out[split] = ([s for s, _ in part], np.array([lab for _, lab in part], dtype=np.int32))
    return out


# --------------------------------------------------------------------------- #
# Release files
# --------------------------------------------------------------------------- #


def _iter_tsv(path: Path) -> Iterator[tuple[str, int]]:
    """Validated (expression, label) rows of a ListOps TSV (read as bytes, so a line that is not
    UTF-8 is reported with its number)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"ListOps file {path} does not exist") from None
    with f:
        lineno = 0
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise ListOpsFormatError(f"{path}:{lineno}: not UTF-8 text ({error.reason} at byte {error.start} "
                                         "of the line); is this a ListOps TSV?") from None
            if lineno == 1:
                if tuple(line.split("\t")) != TSV_HEADER:
                    raise ListOpsFormatError(
                        f"{path}:1: expected the header 'Source<TAB>Target', found {line[:80]!r}"
                    )
                continue
            if not line.strip():
                raise ListOpsFormatError(f"{path}:{lineno}: empty line")
            cols = line.split("\t")
            if len(cols) != 2:
                raise ListOpsFormatError(
                    f"{path}:{lineno}: expected 2 tab-separated columns (expression, label), found {len(cols)}"
                )
            expr, label = cols
            if not expr.strip():
                raise ListOpsFormatError(f"{path}:{lineno}: empty expression")
            lab = label.strip()
            if not (lab.isascii() and lab.isdigit()) or not 0 <= int(lab) < NUM_CLASSES:
                raise ListOpsFormatError(f"{path}:{lineno}: label {label!r} is not an integer in 0..9")
            yield expr, int(lab)
        if lineno == 0:
            raise ListOpsFormatError(f"{path}:1: file is empty, expected the header 'Source<TAB>Target'")
        if lineno == 1:
            raise ListOpsFormatError(f"{path}: no examples after the header; the split would be empty")


def read_listops_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a ListOps TSV (``Source<TAB>Target`` header, then ``expression<TAB>label``).

    Returns the expressions and an ``int32`` label array.  Raises
    :class:`ListOpsFormatError` naming the file and 1-based line number for a
    missing or wrong header, a wrong column count, an empty expression, or a
    label that is not an integer in 0..9.
    """
    exprs: list[str] = []
    labels: list[int] = []
    for expr, label in _iter_tsv(Path(path)):
        exprs.append(expr)
        labels.append(label)
    return exprs, np.array(labels, dtype=np.int32)


def write_listops_tsv(path: str | os.PathLike, expressions: Sequence[str], labels: Sequence[int]) -> None:
    """Write expressions and labels in the LRA TSV format (header ``Source<TAB>Target``)."""
    if len(expressions) != len(labels):
        raise ValueError(f"{len(expressions)} expressions but {len(labels)} labels")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(TSV_HEADER) + "\n")
        for expr, label in zip(expressions, labels):
            if "\t" in expr or "\n" in expr:
                raise ValueError("expressions must not contain tabs or newlines")
            f.write(f"{expr}\t{int(label)}\n")


_RELEASE_HELP = (
    "Get it from the LRA release archive https://storage.googleapis.com/long-range-arena/lra_release.gz "
    "(about 7.7 GB; a gzip-compressed tar despite its name: extract it with `tar -xzf lra_release.gz`; "
    "the files are then in lra_release/lra_release/listops-1000/), or download the single file from "
    "https://storage.cloud.google.com/long-range-arena/lra_release/listops-1000/{name}; then set "
    "release_dir to the folder holding basic_train.tsv, basic_val.tsv and basic_test.tsv."
)


def _release_files(release_dir: str | os.PathLike | None) -> dict[str, Path]:
    if release_dir is None:
        raise FileNotFoundError(
            "ListOps source 'release' needs release_dir, the folder holding basic_{train,val,test}.tsv. "
            + _RELEASE_HELP.format(name="basic_train.tsv")
        )
    root = Path(release_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"ListOps release_dir {root} does not exist. " + _RELEASE_HELP.format(name="basic_train.tsv")
        )
    # Accept the listops folder itself or an extracted archive root above it.
    folder = root
    for cand in (root, root / "listops-1000", root / "lra_release" / "listops-1000"):
        if (cand / RELEASE_FILES["train"]).is_file():
            folder = cand
            break
    files = {s: folder / RELEASE_FILES[s] for s in SPLITS}
    for split, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(
                f"ListOps release file {p} not found. " + _RELEASE_HELP.format(name=RELEASE_FILES[split])
            )
    return files


# --------------------------------------------------------------------------- #
# Loading with a cache
# --------------------------------------------------------------------------- #

_GEN_KEYS = set(DEFAULT_GENERATOR) | {"workers"}


def _resolve_config(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(task_cfg)
    name = cfg.get("name", "listops")
    if name != "listops":
        raise ValueError(f"load_listops got a config for task {name!r}")
    source = cfg.get("source", "generator")
    if source not in ("generator", "release"):
        raise ValueError(f"ListOps source must be 'generator' or 'release', got {source!r}")
    tokenizer = cfg.get("tokenizer", "fixed")
    _check_tokenizer(tokenizer)
    gen_in = dict(cfg.get("generator") or {})
    unknown = set(gen_in) - _GEN_KEYS
    if unknown:
        raise ValueError(f"unknown ListOps generator options {sorted(unknown)}; known: {sorted(_GEN_KEYS)}")
    gen = {k: int(gen_in.get(k, v)) for k, v in DEFAULT_GENERATOR.items()}
    workers = gen_in.get("workers")
    return {
        "source": source,
        "tokenizer": tokenizer,
        "release_dir": cfg.get("release_dir"),
        "generator": gen,
        "workers": None if workers is None else int(workers),
    }


def cache_key(params: Mapping[str, Any]) -> str:
    """Directory name for content ``params``: a readable prefix plus a hash of all of them."""
    if params["source"] == "generator":
        prefix = f"gen-seed{params['generator']['seed']}-{params['tokenizer']}"
    else:
        prefix = f"release-{params['tokenizer']}"
    return params_key(prefix, params)


# Unknown tokens in release files: the first few are shown; more than this many refuse the build
# (a different or damaged file) unless task.allow_unknown_tokens=true.
UNKNOWN_TOKENS_SHOWN = 5
UNKNOWN_TOKEN_LIMIT = 10


class UnknownTokens:
    """Counts the release tokens that ``tokenizer``'s vocabulary lacks (they become ``<unk>``)."""

    def __init__(self, tokenizer: str):
        self.tokenizer, self.unk = tokenizer, _LOOKUPS[tokenizer].unk
        self.per_split: dict[str, int] = {}
        self.examples: list[str] = []

    def count(self, split: str, path: Path, lineno: int, expression: str, ids: np.ndarray) -> None:
        found = int(np.count_nonzero(ids == self.unk))
        self.per_split[split] = self.per_split.get(split, 0) + found
        if found and len(self.examples) < UNKNOWN_TOKENS_SHOWN:
            tokens = [t for t in tokenize(expression, self.tokenizer) if t not in _LOOKUPS[self.tokenizer]]
            self.examples.append(f"{path}:{lineno}: {', '.join(repr(t) for t in tokens[:5])}")

    @property
    def total(self) -> int:
        return sum(self.per_split.values())

    def summary(self) -> dict[str, Any]:
        return {"total": self.total, "per_split": dict(self.per_split), "first": list(self.examples)}

    def check(self, allowed: bool) -> None:
        if not self.total:
            return
        where = "\n  ".join(self.examples)
        message = (f"ListOps release: {self.total} token(s) not in the {self.tokenizer!r} vocabulary "
                   f"(per split: {self.per_split}), mapped to {UNK}; first:\n  {where}")
        if self.total > UNKNOWN_TOKEN_LIMIT and not allowed:
            raise ListOpsFormatError(f"{message}\nmore than {UNKNOWN_TOKEN_LIMIT}: these are not the LRA "
                                     "ListOps files (or they are damaged); set task.allow_unknown_tokens=true to "
                                     "build the cache anyway (the counts are kept in its manifest)")
        log.warning(message)


def load_listops(task_cfg: Mapping[str, Any], cache_root: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Build (first time) or open the ListOps token cache for ``task_cfg``.

    ``task_cfg`` keys: ``name`` ("listops"), ``source`` ("generator" or
    "release"), ``release_dir`` (folder with ``basic_{train,val,test}.tsv``,
    for source "release"), ``tokenizer`` ("fixed" or "legacy_alnum") and
    ``generator`` (``seed``, ``num_train``, ``num_val``, ``num_test``,
    ``max_depth``, ``max_args``, ``min_length``, ``max_length``; optional
    ``workers``, which does not change the content).  Other keys are ignored.

    The cache lives in ``cache_root/listops/<key>/`` where ``<key>`` hashes
    every parameter that changes the content (for the release: the files'
    sha256, memoised in ``cache_root/listops/.release-sha256.json`` by file
    size, mtime and inode), with splits ``train``, ``val`` and ``test``.  An
    existing cache is opened, not rebuilt; a damaged one raises
    :class:`~lra.data.token_cache.CacheError` (delete it to rebuild).
    """
    cfg = _resolve_config(task_cfg)
    tokenizer = cfg["tokenizer"]
    task_root = Path(cache_root).expanduser() / "listops"
    params: dict[str, Any] = {
        "source": cfg["source"],
        "tokenizer": tokenizer,
        "tokenizer_version": TOKENIZERS[tokenizer]["version"],
    }
    if cfg["source"] == "generator":
        params["generator"] = dict(cfg["generator"])
        params["generator_version"] = GENERATOR_VERSION
        params["value_p"] = VALUE_P
        files = None
    else:
        release_dir = cfg["release_dir"] or release_root(task_cfg, cache_root, needs="listops-1000",
                                                         progress=progress)
        files = _release_files(release_dir)
        memo = task_root / ".release-sha256.json"
        params["files"] = {s: {"name": p.name, "sha256": file_sha256(p, memo)} for s, p in files.items()}

    directory = task_root / cache_key(params)
    if directory.exists():
        log.info("ListOps: using cache %s", directory)
        return read_matching_cache(directory, params)

    log.info("ListOps: building cache %s", directory)
    tok_info = {"name": tokenizer, "version": TOKENIZERS[tokenizer]["version"]}
    if cfg["source"] == "generator":
        g = cfg["generator"]
        data = generate_listops(
            g["num_train"], g["num_val"], g["num_test"],
            seed=g["seed"], max_depth=g["max_depth"], max_args=g["max_args"],
            min_length=g["min_length"], max_length=g["max_length"],
            workers=cfg["workers"], progress=progress,
        )  # fmt: skip
        splits = {
            s: ((_from_fixed_ids(seq, tokenizer) for seq in seqs), labels) for s, (seqs, labels) in data.items()
        }
        source = {
            "kind": "generator",
            "description": "seeded re-implementation of lra_benchmarks/data/listops.py (google-research/long-range-arena)",
            "generator_version": GENERATOR_VERSION,
        }
    else:
        assert files is not None
        splits = {}
        unknown = UnknownTokens(tokenizer)
        with progress_bar(progress) as bar:
            for split, p in files.items():
                task = bar.add_task(f"ListOps: reading {p.name}", total=p.stat().st_size)
                seqs: list[np.ndarray] = []
                labs: list[int] = []
                done = 0
                for lineno, (expr, label) in enumerate(_iter_tsv(p), start=2):
                    ids = encode(expr, tokenizer)
                    unknown.count(split, p, lineno, expr, ids)
                    seqs.append(ids)
                    labs.append(label)
                    done += len(expr) + 3
                    if len(seqs) % 1000 == 0:
                        bar.update(task, completed=done)
                bar.update(task, completed=p.stat().st_size)
                splits[split] = (seqs, np.array(labs, dtype=np.int32))
        unknown.check(bool(task_cfg.get("allow_unknown_tokens", False)))
        source = {
            "kind": "release",
            "description": "LRA release archive, lra_release/listops-1000",
            "files": {s: {"path": str(p.resolve()), **params["files"][s]} for s, p in files.items()},
        }
    manifest_extra = {
        "task": "listops",
        "source": source,
        "tokenizer": tok_info,
        "vocab": vocab_for(tokenizer),
        "params": params,
    }
    if cfg["source"] == "release":
        manifest_extra["unknown_tokens"] = unknown.summary()
    try:
        write_cache(directory, splits, manifest_extra)
    except FileExistsError:
        log.info("ListOps: another process completed %s first; using its copy", directory)
    return read_cache(directory)

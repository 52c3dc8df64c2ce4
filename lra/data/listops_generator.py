"""The ListOps generator: random nested list-operation expressions and their values.

Grammar and serialisation
-------------------------
The defaults follow the LRA generator, ``lra_benchmarks/data/listops.py`` in
``google-research/long-range-arena``.  A tree is drawn top-down with the root
at depth 1.  A node at the maximum depth (10) is a leaf; any other node is a
leaf with probability 0.75 (the generator draws ``r ~ U(0, 1)`` and makes a
leaf when ``r > VALUE_P = 0.25``), otherwise an operator node with between 2
and ``max_args`` (10) children, inclusive.  A leaf is a uniform digit.  An
operator node picks its operator uniformly among MIN, MAX, MED, SM *after*
its children have been drawn (:func:`apply_operator` gives its value).

Nodes are written as curried pairs, each pair in parentheses, so
``[MAX 2 9 ]`` is serialised as ``( ( ( [MAX 2 ) 9 ) ] )`` (:func:`to_expression`).
An expression's length counts operators, values and closing ``]`` but not
parentheses; a tree is kept only when ``min_length < length < max_length``
strictly (501..1999 tokens with the defaults 500 / 2000).  Split sizes default
to 96,000 / 2,000 / 2,000.  Trees come out as ids of the ``fixed`` tokenizer
(:data:`VOCAB`; the task module, :mod:`lra.data.listops`, re-encodes them for
another tokenizer and caches them).

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
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np

from lra.data.preparation import default_workers, progress_bar

__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATOR_VERSION",
    "OPERATORS",
    "VALUE_P",
    "VOCAB",
    "apply_operator",
    "generate_listops",
    "to_expression",
]

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
END = "]"
#: Operators in the LRA generator's order (the draw index maps into this list).
OPERATORS: tuple[str, ...] = (MIN, MAX, MED, SUM_MOD)
VALUE_P = 0.25

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
    bar=None,
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
    the usual ``if __name__ == "__main__":`` guard.  ``bar``: a live rich progress bar to report
    on (else one of its own when ``progress``).
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
        with contextlib.nullcontext(bar) if bar is not None else progress_bar(progress) as bar:
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

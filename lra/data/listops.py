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

Data
----
``source: generator`` (default) draws the expressions with the seeded generator
of :mod:`lra.data.listops_generator` (grammar, serialisation and its
deliberate deviations from the LRA code are described there); ``source:
release`` reads the LRA release's TSVs.  Files are TSVs with the header
``Source<TAB>Target``; the LRA release calls them
``listops-1000/basic_{train,val,test}.tsv``.

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

Deviation from the LRA code (deliberate)
----------------------------------------
* The vocabulary is the fixed sorted list above instead of being built with a
  ``set`` over validation examples, whose id order changes between processes
  (harness quirk **D3**).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.listops_generator import (_DIGITS, _X_ID, DEFAULT_GENERATOR, GENERATOR_VERSION, PAD, UNK, VALUE_P,
                                        VOCAB, generate_listops)
from lra.data.lra_release import release_root
from lra.data.token_cache import TokenCache, file_sha256, open_or_build, params_key

__all__ = [
    "LEGACY_VOCAB",
    "ListOpsFormatError",
    "RELEASE_FILES",
    "SPLITS",
    "TOKENIZERS",
    "VOCAB",
    "cache_key",
    "decode",
    "encode",
    "load_listops",
    "read_listops_tsv",
    "tokenize",
    "vocab_for",
    "write_listops_tsv",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Release file name of every split, inside ``lra_release/listops-1000/``.
RELEASE_FILES: dict[str, str] = {s: f"basic_{s}.tsv" for s in SPLITS}
TSV_HEADER = ("Source", "Target")
NUM_CLASSES = 10

#: ``legacy_alnum`` tokenizer vocab: index = id.
LEGACY_VOCAB: tuple[str, ...] = (PAD, *sorted(_DIGITS + ["MAX", "MED", "MIN", "SM"]), UNK)

TOKENIZERS: dict[str, dict[str, Any]] = {
    "fixed": {"version": 1, "vocab": VOCAB},
    "legacy_alnum": {"version": 1, "vocab": LEGACY_VOCAB},
}



class ListOpsFormatError(ValueError):
    """A ListOps TSV file is malformed (the message names file and line)."""



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

    tok_info = {"name": tokenizer, "version": TOKENIZERS[tokenizer]["version"]}

    def build(bar):
        if cfg["source"] == "generator":
            g = cfg["generator"]
            data = generate_listops(
                g["num_train"], g["num_val"], g["num_test"],
                seed=g["seed"], max_depth=g["max_depth"], max_args=g["max_args"],
                min_length=g["min_length"], max_length=g["max_length"],
                workers=cfg["workers"], progress=progress, bar=bar,
            )  # fmt: skip
            splits = {
                s: ((_from_fixed_ids(seq, tokenizer) for seq in seqs), labels) for s, (seqs, labels) in data.items()
            }
            source = {
                "kind": "generator",
                "description": "seeded re-implementation of lra_benchmarks/data/listops.py (google-research/long-range-arena)",
                "generator_version": GENERATOR_VERSION,
            }
            return splits, {"task": "listops", "source": source, "tokenizer": tok_info, "vocab": vocab_for(tokenizer)}
        splits = {}
        unknown = UnknownTokens(tokenizer)
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
        return splits, {"task": "listops", "source": source, "tokenizer": tok_info, "vocab": vocab_for(tokenizer),
                        "unknown_tokens": unknown.summary()}

    # Generated trees are counted, release files measured in bytes.
    return open_or_build(task_root / cache_key(params), params, build, progress,
                         bytes_=cfg["source"] == "release")

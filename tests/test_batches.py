"""Tests for lra.data.batches: eval/train batch assembly over a token cache, and device prefetch."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from lra.data.batches import eval_batches, prefetch_to_device, train_batches
from lra.data.token_cache import read_cache, write_cache

VOCAB_SIZE = 300
MAX_LENGTH = 12
TIMEOUT_S = 10.0


def _sequence(i: int) -> np.ndarray:
    """Example i: a non-zero sequence whose length (1..25) and content depend on i."""
    length = 1 + (i * 7) % 25
    return ((i * 13 + np.arange(length)) % (VOCAB_SIZE - 1) + 1).astype(np.int64)


def _expected_row(i: int, max_length: int = MAX_LENGTH) -> np.ndarray:
    row = np.zeros(max_length, np.int32)
    seq = _sequence(i)[:max_length]
    row[: len(seq)] = seq
    return row


def _make_split(directory, n: int):
    seqs = [_sequence(i) for i in range(n)]
    labels = np.arange(n)  # label = example index, so batches reveal which examples they hold
    write_cache(directory, {"train": (seqs, labels)}, {"task": "toy", "vocab": [f"t{i}" for i in range(VOCAB_SIZE)]})
    return read_cache(directory)["train"]


@pytest.fixture(scope="module")
def split23(tmp_path_factory):
    return _make_split(tmp_path_factory.mktemp("cache23") / "c", 23)


@pytest.fixture(scope="module")
def split20(tmp_path_factory):
    return _make_split(tmp_path_factory.mktemp("cache20") / "c", 20)


def _check_rows(batch, max_length=MAX_LENGTH):
    """Every real row holds the (truncated, zero-padded) sequence of the example named by its label."""
    for row, label, weight in zip(batch["tokens"], batch["labels"], batch["weights"]):
        if weight == 1.0:
            np.testing.assert_array_equal(row, _expected_row(int(label), max_length))
        else:
            assert weight == 0.0
            assert not row.any() and label == 0


def _run_with_timeout(fn, timeout=TIMEOUT_S):
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it does not finish."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as error:  # re-raised below
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"timed out after {timeout} s (hang)"
    if "error" in result:
        raise result["error"]
    return result["value"]


# --------------------------------------------------------------------------- #
# eval_batches
# --------------------------------------------------------------------------- #


def test_eval_batches_cover_every_example_once(split23):
    batches = list(eval_batches(split23, batch_size=5, max_length=MAX_LENGTH))
    assert len(batches) == 5  # ceil(23 / 5)
    for batch in batches:
        assert batch["tokens"].shape == (5, MAX_LENGTH) and batch["tokens"].dtype == np.int32
        assert batch["labels"].shape == (5,) and batch["labels"].dtype == np.int32
        assert batch["weights"].shape == (5,) and batch["weights"].dtype == np.float32
        _check_rows(batch)
    weights = np.concatenate([b["weights"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    assert weights.sum() == 23
    assert sorted(labels[weights == 1].tolist()) == list(range(23))
    # in order, and only the last batch is padded: 3 real rows + 2 zero-weight rows
    assert labels[weights == 1].tolist() == list(range(23))
    assert batches[-1]["weights"].tolist() == [1, 1, 1, 0, 0]
    assert all(b["weights"].all() for b in batches[:-1])


def test_eval_batches_exact_multiple_has_no_padding(split20):
    batches = list(eval_batches(split20, batch_size=4, max_length=MAX_LENGTH))
    assert len(batches) == 5
    assert all(b["weights"].all() for b in batches)
    assert np.concatenate([b["labels"] for b in batches]).tolist() == list(range(20))


def test_eval_batches_batch_larger_than_split(split20):
    (batch,) = list(eval_batches(split20, batch_size=32, max_length=MAX_LENGTH))
    assert batch["tokens"].shape == (32, MAX_LENGTH)
    assert batch["weights"].sum() == 20
    _check_rows(batch)


@pytest.mark.parametrize("limit, n_batches", [(12, 3), (5, 1), (1, 1), (23, 5), (1000, 5)])
def test_eval_limit_is_honoured(split23, limit, n_batches):
    batches = list(eval_batches(split23, batch_size=5, max_length=MAX_LENGTH, limit_examples=limit))
    assert len(batches) == n_batches
    weights = np.concatenate([b["weights"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    assert labels[weights == 1].tolist() == list(range(min(limit, 23)))
    assert {b["tokens"].shape for b in batches} == {(5, MAX_LENGTH)}


def test_eval_batches_truncate_and_pad(split23):
    # sequence lengths run 1..25; max_length 6 truncates most of them and pads the rest
    for max_length in (1, 6, 30):
        for batch in eval_batches(split23, batch_size=7, max_length=max_length):
            assert batch["tokens"].shape == (7, max_length)
            _check_rows(batch, max_length)


# --------------------------------------------------------------------------- #
# train_batches
# --------------------------------------------------------------------------- #


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_train_batches_same_seed_same_batches(split23):
    a = _take(train_batches(split23, 5, MAX_LENGTH, seed=7), 9)
    b = _take(train_batches(split23, 5, MAX_LENGTH, seed=7), 9)
    for x, y in zip(a, b):
        for key in ("tokens", "labels", "weights"):
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_different_seed_different_batches(split23):
    a = np.concatenate([b["labels"] for b in _take(train_batches(split23, 5, MAX_LENGTH, seed=0), 4)])
    b = np.concatenate([b["labels"] for b in _take(train_batches(split23, 5, MAX_LENGTH, seed=1), 4)])
    assert a.tolist() != b.tolist()


def test_train_epochs_are_permutations_when_batch_divides_count(split20):
    it = train_batches(split20, batch_size=5, max_length=MAX_LENGTH, seed=3)
    epochs = []
    for _ in range(3):
        batches = _take(it, 4)
        for batch in batches:
            assert batch["tokens"].shape == (5, MAX_LENGTH)
            assert batch["weights"].tolist() == [1.0] * 5
            _check_rows(batch)
        epochs.append(np.concatenate([b["labels"] for b in batches]).tolist())
    for order in epochs:
        assert sorted(order) == list(range(20))
    # reshuffled every epoch, and not left in storage order
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != list(range(20))


def test_train_epochs_drop_the_remainder(split23):
    it = train_batches(split23, batch_size=5, max_length=MAX_LENGTH, seed=11)
    seen_per_epoch = []
    for _ in range(4):
        labels = np.concatenate([b["labels"] for b in _take(it, 4)]).tolist()  # 4 full batches per epoch
        assert len(set(labels)) == 20  # no example repeated within an epoch
        assert set(labels) <= set(range(23))
        seen_per_epoch.append(set(labels))
    # the dropped 3 examples differ from epoch to epoch, so every example gets seen eventually
    assert set().union(*seen_per_epoch) == set(range(23))


def test_train_limit_examples_uses_only_the_first_ones(split23):
    it = train_batches(split23, batch_size=4, max_length=MAX_LENGTH, seed=0, limit_examples=8)
    for _ in range(3):
        labels = np.concatenate([b["labels"] for b in _take(it, 2)]).tolist()
        assert sorted(labels) == list(range(8))


def test_train_tokens_right_padded_and_truncated(split23):
    for max_length in (3, MAX_LENGTH, 40):
        for batch in _take(train_batches(split23, 6, max_length, seed=5), 6):
            assert batch["tokens"].shape == (6, max_length)
            _check_rows(batch, max_length)


def test_train_batches_error_when_fewer_examples_than_a_batch(split20):
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(train_batches(split20, batch_size=21, max_length=MAX_LENGTH, seed=0))
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(train_batches(split20, batch_size=8, max_length=MAX_LENGTH, seed=0, limit_examples=5))
    # exactly one batch is fine, and repeats forever
    batches = _take(train_batches(split20, batch_size=20, max_length=MAX_LENGTH, seed=0), 3)
    for b in batches:
        assert sorted(b["labels"].tolist()) == list(range(20))


# --------------------------------------------------------------------------- #
# prefetch_to_device
# --------------------------------------------------------------------------- #


def _producer_threads():
    return [t for t in threading.enumerate() if t.name.endswith("(producer)") and t.is_alive()]


def _wait_no_producers(timeout=5.0):
    deadline = time.monotonic() + timeout
    while _producer_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _producer_threads()


def test_prefetch_yields_device_arrays_with_same_content(split23):
    source = list(eval_batches(split23, batch_size=5, max_length=MAX_LENGTH))

    def consume():
        return list(prefetch_to_device(iter(source), size=2))

    got = _run_with_timeout(consume)
    assert len(got) == len(source)
    for want, batch in zip(source, got):
        assert set(batch) == set(want)
        for key in want:
            assert isinstance(batch[key], jax.Array)
            assert batch[key].dtype == want[key].dtype and batch[key].shape == want[key].shape
            np.testing.assert_array_equal(np.asarray(batch[key]), want[key])
    assert not _wait_no_producers()


def test_prefetch_reraises_source_exception(split20):
    class Boom(RuntimeError):
        pass

    def source():
        yield from eval_batches(split20, batch_size=5, max_length=MAX_LENGTH, limit_examples=10)
        raise Boom("source failed at batch 3")

    def consume():
        received = []
        with pytest.raises(Boom, match="source failed at batch 3"):
            for batch in prefetch_to_device(source(), size=1):
                received.append(np.asarray(batch["labels"]))
        return received

    received = _run_with_timeout(consume)
    assert len(received) == 2  # both good batches arrived before the error
    assert np.concatenate(received).tolist() == list(range(10))
    assert not _wait_no_producers()


def test_prefetch_reraises_immediate_exception():
    def source():
        raise KeyError("no data")
        yield  # pragma: no cover

    def consume():
        with pytest.raises(KeyError, match="no data"):
            next(prefetch_to_device(source()))
        return True

    assert _run_with_timeout(consume)


def test_prefetch_early_break_does_not_hang_and_stops_producer(split20):
    pulled = []

    def counted_source():
        for batch in train_batches(split20, batch_size=4, max_length=MAX_LENGTH, seed=0):  # endless
            pulled.append(1)
            yield batch

    size = 2

    def consume():
        taken = 0
        for batch in prefetch_to_device(counted_source(), size=size):
            taken += 1
            if taken == 3:
                break
        return taken  # the generator is closed when this frame is released

    assert _run_with_timeout(consume) == 3
    assert not _wait_no_producers(), "producer thread still running after the consumer stopped"
    n_pulled = len(pulled)
    time.sleep(0.2)
    assert len(pulled) == n_pulled, "the source is still being consumed"
    # the producer runs at most ~size batches ahead of the consumer
    assert n_pulled <= 3 + size + 2


def test_prefetch_explicit_close_while_producer_blocked(split20):
    def consume():
        gen = prefetch_to_device(train_batches(split20, 4, MAX_LENGTH, seed=1), size=1)
        first = next(gen)
        time.sleep(0.2)  # let the producer fill the queue and block on put()
        gen.close()
        return first

    first = _run_with_timeout(consume)
    assert first["tokens"].shape == (4, MAX_LENGTH)
    assert not _wait_no_producers()


def test_prefetch_of_empty_source_ends():
    assert _run_with_timeout(lambda: list(prefetch_to_device(iter([])))) == []

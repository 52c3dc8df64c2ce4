"""Fixed-shape batches from a token cache, shuffled by seed and prefetched to the device.

Every batch has the same shape, so the train and eval steps compile once:
- training batches are drawn from a fresh seeded permutation each epoch (remainder dropped);
- evaluation batches walk the split in order and the last one is padded with zero-weight rows
  (``weights`` = 0), so every example is scored exactly once and nothing recompiles.

A background thread assembles numpy batches and ``jax.device_put``s them a few steps ahead, so
the training loop never waits on the host (the step time reported is the device's).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np

from lra.data.token_cache import TokenSplit


def _assemble(split: TokenSplit, indices: np.ndarray, batch_size: int, max_length: int) -> dict:
    tokens = np.zeros((batch_size, max_length), np.int32)
    split.gather(indices, max_length, out=tokens[: len(indices)])
    labels = np.zeros((batch_size,), np.int32)
    labels[: len(indices)] = split.labels[indices]
    weights = np.zeros((batch_size,), np.float32)
    weights[: len(indices)] = 1.0
    return {"tokens": tokens, "labels": labels, "weights": weights}


def train_batches(split: TokenSplit, batch_size: int, max_length: int, seed: int,
                  limit_examples: int | None = None, start: int = 0) -> Iterator[dict]:
    """Endless training batches; epoch e uses permutation rng(seed, e) of the (first limit) examples.

    ``start`` skips that many batches (a resumed run's step count) without assembling them: batch
    i is batch i % per_epoch of epoch i // per_epoch, so the position needs no saved state.
    """
    if batch_size < 1:  # else no epoch would hold a batch and this would loop forever yielding nothing
        raise ValueError(f"train.batch_size must be >= 1; got {batch_size}")
    count = len(split) if limit_examples is None else min(limit_examples, len(split))
    if count < batch_size:
        raise ValueError(f"train split has {count} examples, fewer than one batch of {batch_size}")
    per_epoch = count // batch_size  # the remainder of each permutation is dropped
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        for index in range(offset, per_epoch):
            rows = order[index * batch_size:(index + 1) * batch_size]
            yield _assemble(split, rows, batch_size, max_length)
        epoch, offset = epoch + 1, 0


def eval_batches(split: TokenSplit, batch_size: int, max_length: int,
                 limit_examples: int | None = None) -> Iterator[dict]:
    """One pass over the split in order; the last batch is padded with zero-weight rows."""
    if batch_size < 1:
        raise ValueError(f"train.eval_batch_size must be >= 1; got {batch_size}")
    count = len(split) if limit_examples is None else min(limit_examples, len(split))
    for start in range(0, count, batch_size):
        yield _assemble(split, np.arange(start, min(start + batch_size, count)), batch_size, max_length)


def to_device(batch: dict, sharding=None) -> dict:
    """A host batch -> device arrays laid out by ``sharding`` (e.g. rows split over a data axis).

    With several processes every one assembles the same global batch and contributes the rows
    its own devices hold (``jax.make_array_from_process_local_data`` with the global shape).
    """
    if sharding is None or jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {key: jax.make_array_from_process_local_data(sharding, value, value.shape)
            for key, value in batch.items()}


def prefetch_to_device(batches: Iterator[dict], size: int = 2, sharding=None) -> Iterator[dict]:
    """Yield device-resident batches (laid out by ``sharding``), produced ``size`` ahead by a thread."""
    monotonic = time.monotonic  # bound now: the finally below may run at interpreter shutdown
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def producer():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                buffer.put(to_device(batch, sharding))
            buffer.put(done)
        except BaseException as error:  # surfaced in the consumer
            buffer.put(error)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # unblock and retire the producer when the consumer stops early
        stop.set()
        deadline = monotonic() + 10.0  # a source blocked inside next() cannot hold us forever
        while thread.is_alive() and monotonic() < deadline:
            try:
                buffer.get(timeout=0.05)
            except queue.Empty:
                pass

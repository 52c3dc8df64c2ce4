"""The two token encodings of the byte and pixel tasks, in one place.

Bytes (Text, Retrieval)
    UTF-8 bytes + 1, as TFDS's ``ByteTextEncoder`` that the official pipelines use (LRA issue #61):
    ids 1..256 are the bytes 0..255 and id 0 is padding, vocab 257 (:data:`BYTE_VOCAB`,
    :func:`encode_bytes`).

Pixels (Image, Pathfinder, Path-X)
    The 8-bit gray level is the token: vocab 256 (:data:`PIXEL_VOCAB`), no offset and no padding id
    (pixel 0 is black; the task configs set ``pad_id: null``).  CIFAR-10's colour images are first
    turned gray exactly as TensorFlow's ``tf.image.rgb_to_grayscale`` does (:func:`rgb_to_grayscale`,
    quirk D9).

A cache records the encoding's name and version in its manifest (``tokenizer``) and in its
parameters, so changing an encoding here means bumping its version.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BYTE_TOKENIZER", "BYTE_VOCAB", "GRAYSCALE_TOKENIZER", "GRAYSCALE_WEIGHTS", "PIXEL_TOKENIZER",
           "PIXEL_VOCAB", "encode_bytes", "rgb_to_grayscale"]

#: Byte-level vocabulary: id 0 = padding, id b + 1 = byte b (the TFDS ByteTextEncoder's ids).
BYTE_VOCAB: list[str] = ["<pad>", *(f"<0x{b:02X}>" for b in range(256))]
BYTE_TOKENIZER: dict[str, object] = {"name": "utf8_bytes_plus_1", "version": 1}

#: Pixel vocabulary: token = gray level 0..255.
PIXEL_VOCAB: list[str] = [str(v) for v in range(256)]
PIXEL_TOKENIZER: dict[str, object] = {"name": "pixels", "version": 1,
                                      "description": "8-bit grayscale pixel values, row-major"}
GRAYSCALE_TOKENIZER: dict[str, object] = {"name": "tf_rgb_to_grayscale", "version": 1}
GRAYSCALE_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale


def encode_bytes(text: bytes, content_length: int | None = None) -> np.ndarray:
    """UTF-8 bytes -> ids ``byte + 1`` (``uint16``), keeping the first ``content_length`` bytes."""
    raw = np.frombuffer(text[:content_length] if content_length is not None else text, dtype=np.uint8)
    return raw.astype(np.uint16) + 1


def rgb_to_grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> uint8 gray ``(...)``, exactly as ``tf.image.rgb_to_grayscale``.

    TF converts to float32 by multiplying by 1/255, takes the weighted sum in float32 and converts
    back with ``cast(x * 255.5)`` (truncation), so e.g. RGB (10, 200, 30) gives 124, where rounding
    the weighted sum 123.809 down would give 123.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (..., 3), got {images.dtype} {images.shape}")
    scaled = images.astype(np.float32) * np.float32(1.0 / 255.0)
    w = GRAYSCALE_WEIGHTS
    gray = scaled[..., 0] * w[0] + scaled[..., 1] * w[1] + scaled[..., 2] * w[2]
    return np.clip(gray * np.float32(255.5), 0, 255).astype(np.uint8)

"""Build any registered attention from its YAML, the way the encoder does."""

from __future__ import annotations

from lra.build import make_attention  # noqa: F401 - the one way tests build an attention
from lra.registry import runnable_attentions

CPU_ATTENTIONS = runnable_attentions("cpu")[0]

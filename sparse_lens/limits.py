"""The size limits sparse-lens enforces on what it reads, stated once.

A config or file that asks for more than these is refused with an error naming the field and
the limit *before* anything is allocated, so a typo (``d_vocab = 1000000000``) costs a message,
not 128 GB of memory or a process that never returns. The limits are far above anything this
library trains (the paper's largest models have tens of millions of weights); code that really
needs more can raise them here.
"""

from __future__ import annotations

MAX_LAYERS = 1024
"""``n_layers``: blocks are built one by one, so a huge count never returns."""

MAX_HEADS = 4096
MAX_WIDTH = 2**20
"""``d_model``, ``d_head``, ``d_mlp``, ``d_pos_emb``: channels of one activation."""

MAX_VOCAB = 2**22
"""``d_vocab``: the bigram table alone is ``d_vocab**2`` weights."""

MAX_CONTEXT = 2**20
"""``n_ctx``: positions per sequence."""

MAX_PARAMETERS = 2**33
"""Weights of a whole model (about 32 GiB in float32); also the largest tensor a file may
declare."""

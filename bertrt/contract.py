"""The contracts every stage shares: model inputs and outputs, precisions, defaults, and valid random inputs.

**Canonical model** (what ``convert`` writes, ``surgery`` reads, every backend runs): inputs ``input_ids``,
``segment_ids``, ``input_mask``, int32 [batch, seq]; output ``logits``, float32 [batch, seq, 2] (start, end),
or ``hidden_states`` [batch, seq, hidden] for an encoder without a QA head. A fused fixed-length graph keeps
the same inputs and outputs.

**Var-seqlen (packed) model**: inputs ``input_ids``, ``segment_ids`` int32 [total_tokens], ``cu_seqlens`` int32
[batch + 1], ``max_seqlen`` [longest sequence] (only its shape is read); output ``logits`` [total_tokens, 2].
How long a packed sequence may be is a fact of the var-seqlen plugins (``bertrt.plugins.specs.MAX_SEQLEN``).
"""

from __future__ import annotations

import numpy as np

INPUT_IDS, SEGMENT_IDS, INPUT_MASK = "input_ids", "segment_ids", "input_mask"
CU_SEQLENS, MAX_SEQLEN_INPUT = "cu_seqlens", "max_seqlen"
CANONICAL_INPUTS = (INPUT_IDS, SEGMENT_IDS, INPUT_MASK)
VARSEQLEN_INPUTS = (INPUT_IDS, SEGMENT_IDS, CU_SEQLENS, MAX_SEQLEN_INPUT)
LOGITS, HIDDEN_STATES = "logits", "hidden_states"
CANONICAL_OUTPUTS = (LOGITS, HIDDEN_STATES)

# Precisions, lowest accuracy last: surgery, build and compare take the same names.
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = "fp16"  # what a BERT engine is built in; surgery and build must agree on it
DEFAULT_TARGET = "trt10"
DEFAULT_SEQ = 384  # the former demo's SQuAD sequence length, for models whose sequence axis is free
MIN_SEQ = 8  # [CLS] question [SEP] passage [SEP] needs a few tokens; shorter sequences hold no question
CHECK_SEQ = 128  # a dynamic-sequence model is checked (TF against ONNX Runtime) at this length
VOCAB_SIZE = 30522  # BERT's uncased WordPiece vocabulary (what random ids are drawn from by default)

# The mask tensors the attention pass wires into QKVToContext before EmbLayerNorm exists (the embeddings
# pass then replaces MASK_IDX with EmbLayerNorm's mask output).
MASK_IDX = "bertrt_mask_idx"  # [B, 1] int32: each sequence's length (QKV 1/4)
MASK_LEN = "bertrt_mask_len"  # [B] int32 (QKV 2/5 with var_seqlen=0)


def random_feeds(batch: int, seq: int, vocab: int = VOCAB_SIZE, *, seed: int = 0, lengths: str = "random",
                 min_length: int = 1, segments: str = "random", rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:
    """Valid canonical inputs, int32 [batch, seq]: token ids in [0, vocab) (0 at padding), a prefix mask.

    ``lengths``: "random" (each sequence has a random length in [min_length, seq], then padding) or "full"
    (every position is a real token, as a benchmark runs). ``segments``: "random" (each real token 0 or 1)
    or "split" (0 for the first third of the real tokens, then 1: a question and its passage). ``rng``
    draws from a caller's generator (several feeds in a row) instead of a fresh one seeded with ``seed``.
    """
    if lengths not in ("random", "full") or segments not in ("random", "split"):
        raise ValueError(f"lengths must be 'random' or 'full', segments 'random' or 'split' "
                         f"(got {lengths!r}, {segments!r})")
    rng = np.random.default_rng(seed) if rng is None else rng
    ids = rng.integers(0, vocab, (batch, seq))
    if lengths == "full":
        n = np.full(batch, seq)
    else:
        n = rng.integers(min(max(1, min_length), seq), seq + 1, batch)
    pos = np.arange(seq)[None, :]
    mask = pos < n[:, None]
    if segments == "split":
        seg = pos >= np.maximum(n // 3, 1)[:, None]
    else:
        seg = rng.integers(0, 2, (batch, seq)).astype(bool)
    return {INPUT_IDS: (ids * mask).astype(np.int32), SEGMENT_IDS: (seg & mask).astype(np.int32),
            INPUT_MASK: mask.astype(np.int32)}


def resolve_seq(fixed: int | None, seq: int | None = None, path=None) -> int:
    """The sequence length to run a model at: ``seq`` if given (it must equal the model's if that is fixed),
    else the model's fixed length, else ``DEFAULT_SEQ``."""
    from bertrt.errors import BertrtError

    if seq is None:
        return fixed or DEFAULT_SEQ
    if fixed and seq != fixed:
        raise BertrtError(f"the model takes sequence length {fixed}, not {seq}", path)
    return seq

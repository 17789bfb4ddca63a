"""Var-seqlen packing: padded [B, S] features <-> the packed inputs and outputs of a var-seqlen model.

A packed model takes only the real tokens of a batch, back to back (``input_ids`` / ``segment_ids`` [T]),
``cu_seqlens`` [B + 1] (where each sequence starts) and ``max_seqlen``, whose data is never read: its
length is the longest sequence, from which the plugins pick their kernel. Logits come back [T, 2] and are
put back at each sequence's positions of a [B, S, 2] array (zeros at padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertrt.errors import BertrtError
from bertrt.plugins.nodes import EMB_LAYER_NORM
from bertrt.plugins.specs import MAX_SEQLEN  # what the var-seqlen plugins compute at most (384)


def position_rows(model) -> int | None:
    """Rows of an ONNX model's position table, or None if it has none (a table sliced to a fixed length): no
    sequence may be longer. A fused graph's is its EmbLayerNorm's (whose kernel reads it without a bound; only
    the tables' dims are read), a canonical model's the constant table its positions index
    (``convert.onnx_intake.position_rows``)."""
    for n in model.graph.node:
        if n.op_type == EMB_LAYER_NORM:
            attrs = {a.name: a for a in n.attribute}
            pos, beta = attrs.get("bert_embeddings_position_embeddings"), attrs.get("bert_embeddings_layernorm_beta")
            if pos is not None and beta is not None:
                return int(np.prod(pos.t.dims)) // max(1, int(np.prod(beta.t.dims)))
            return None
    import onnx_graphsurgeon as gs

    from bertrt.convert.onnx_intake import position_rows as canonical_rows

    return canonical_rows(gs.import_onnx(model))


def model_max_length(model) -> int:
    """The longest sequence a var-seqlen ONNX model computes: its EmbLayerNorm's position rows, at most
    MAX_SEQLEN."""
    rows = position_rows(model)
    return MAX_SEQLEN if rows is None else min(MAX_SEQLEN, rows)


def sequence_lengths(mask: np.ndarray, path=None) -> np.ndarray:
    """Each row's length: its mask must be 1s followed by 0s (features put the real tokens first)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BertrtError(f"input_mask must be [batch, seq], got shape {mask.shape}", path)
    lengths = (mask != 0).sum(axis=1)
    prefix = np.arange(mask.shape[1])[None, :] < lengths[:, None]
    bad = np.flatnonzero((prefix != (mask != 0)).any(axis=1))
    if bad.size:
        raise BertrtError(f"sequence {bad[0]}: its input_mask is not 1s followed by 0s, so it cannot be packed", path)
    return lengths.astype(np.int64)


def pack_varseqlen(feeds: dict[str, np.ndarray], max_len: int = MAX_SEQLEN, path=None) -> dict[str, np.ndarray]:
    """Canonical [B, S] feeds -> packed feeds (int32): input_ids, segment_ids [T], cu_seqlens [B + 1], max_seqlen.

    Refuses an empty sequence (length 0) and one longer than ``max_len`` (the var-seqlen plugins' limit,
    or fewer if the model's position table is shorter).
    """
    lengths = sequence_lengths(feeds["input_mask"], path)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise BertrtError(f"sequence {empty[0]} is empty (its input_mask is all 0); a packed batch cannot hold "
                          "an empty sequence", path)
    long = np.flatnonzero(lengths > max_len)
    if long.size:
        raise BertrtError(f"sequence {long[0]} has {lengths[long[0]]} tokens; the var-seqlen model computes at most "
                          f"{max_len}", path)
    keep = np.arange(np.shape(feeds["input_mask"])[1])[None, :] < lengths[:, None]
    return {"input_ids": np.asarray(feeds["input_ids"], dtype=np.int32)[keep],
            "segment_ids": np.asarray(feeds["segment_ids"], dtype=np.int32)[keep],
            "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "max_seqlen": np.zeros(int(lengths.max(initial=0)), dtype=np.int32)}


# A var-seqlen model computes no logits for padding: unpacked for answers, they must rank below every real one (a 0
# there outranks a passage whose logits are all negative, fills the n-best with padding and leaves "empty").
NO_LOGIT = -np.inf


def unpack_varseqlen(logits: np.ndarray, mask: np.ndarray, per_token: int = 2, fill: float = 0.0) -> np.ndarray:
    """Packed logits [T, 2] (or the former demo's [2, T, 1, 1]; or hidden states [T, per_token]) -> [B, S, 2]
    ([B, S, per_token]), ``fill`` where the mask is 0."""
    lengths = sequence_lengths(mask)
    B, S = np.shape(mask)
    keep = np.arange(S)[None, :] < lengths[:, None]
    T = int(keep.sum())
    logits = np.asarray(logits)
    if per_token == 2 and logits.shape[:1] == (2,) and logits.size == 2 * T and logits.shape[0] != T:
        logits = logits.reshape(2, T).T
    if logits.size != per_token * T:
        raise BertrtError(f"packed values of shape {logits.shape} do not hold {per_token} values for each of the "
                          f"{T} tokens")
    out = np.full((B, S, per_token), fill, dtype=np.float32)
    out[keep] = logits.reshape(T, per_token)
    return out


@dataclass(frozen=True)
class TokenCount:
    """Tokens a batch costs packed (its real tokens) and padded (batch x padded length)."""

    packed: int
    padded: int

    @classmethod
    def of(cls, mask: np.ndarray, padded_len: int | None = None) -> "TokenCount":
        lengths = sequence_lengths(mask)
        return cls(int(lengths.sum()), int(lengths.size * (padded_len or np.shape(mask)[1])))

    def __add__(self, other: "TokenCount") -> "TokenCount":
        return TokenCount(self.packed + other.packed, self.padded + other.padded)

    def describe(self) -> str:
        share = 100.0 * self.packed / self.padded if self.padded else 0.0
        return f"packed {self.packed:,} tokens vs padded {self.padded:,} ({share:.0f}%)"

"""Unpadded ("varlen") execution in PyTorch: the tensor half of ``bert_common.varlen`` (whose module
docstring states the rule and the two modes; ``bert_common.semantics.varlen_mode`` picks one per call).

``BertModel.forward`` dispatches here when ``config.attn_implementation == "varlen"``:

* ``"unpad"`` (eager calls): :func:`unpad` makes the host plan from the concrete mask and position ids,
  gathers the T kept tokens into (1, T) inputs and builds :class:`Blocks` once; every layer then runs on
  (1, T, H) and ``BertSelfAttention`` regroups q, k, v into per-sequence blocks (G, N, L, D) with
  :func:`to_blocks` / :func:`from_blocks`; :func:`scatter_outputs` puts the result back at (B, S, H).
* ``"segments"`` (``torch.compile`` / export / ``jit.trace``, or attention probabilities requested):
  the padded layout is kept and :func:`segment_mask` confines attention in-graph; :func:`zero_dropped`
  gives dropped tokens the 0 output the unpadded path gives them.

Shape legend: B batch, S row length, T packed tokens, G blocks (sequences), L block length (longest
sequence), N heads, D head dim, H hidden.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from bert_common import varlen
from bert_common.config import BertConfig


class Blocks(NamedTuple):
    """The block-attention tensors of one forward, built once by :func:`unpad` and passed to every layer in
    place of the padded additive mask (a tuple of tensors, so ``checkpoint`` carries it as is).

    gather:   (G, L) int64, the packed token in each block slot (0 in empty slots).
    slot:     (T,) int64, ``g * L + l``: where each packed token sits in the flattened blocks.
    mask:     additive (G, 1, 1, L) (encoders) or (G, 1, L, L) (decoders, causal on columns) in the mask
              dtype: 0 kept, ``finfo.min`` dropped; None when nothing is dropped (every block full, no
              causal rule), which lets SDPA take its unmasked kernel.
    relative: int64 index into ``distance_embedding`` (relative position types only, else None): (L, L)
              shared by every block when each sequence's columns are consecutive (the usual case, and the
              size the padded path needs), else (G, L, L) per block.
    """
    gather: torch.Tensor
    slot: torch.Tensor
    mask: torch.Tensor | None
    relative: torch.Tensor | None


class Unpadded(NamedTuple):
    """What :func:`unpad` hands back: ``inputs`` (keyword arguments of ``BertEmbeddings`` on (1, T)),
    ``blocks``, and ``token_index`` (T,) int64 ``b * S + s`` of each packed token (``B * S`` for a bucketing
    dummy, a discarded row) used by :func:`scatter_outputs`; ``shape`` is (B, S)."""
    inputs: dict[str, Any]
    blocks: Blocks
    token_index: torch.Tensor
    shape: tuple[int, int]


def _host(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().cpu().numpy()


def unpad(config: BertConfig, input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask,
          mask_dtype: torch.dtype) -> Unpadded:
    """Concrete (B, S) inputs (ids int64 or ``inputs_embeds`` (B, S, H); mask, types, positions (B, S) or
    None; positions may be (1, S)) -> the packed (1, T) inputs and the block tensors.

    Positions default to the column (the padded default ``arange(S)``), so an unpacked row is numbered
    exactly as the padded path numbers it; dummies get id 0, type 0, position 0."""
    lead = input_ids if input_ids is not None else inputs_embeds
    B, S = int(lead.shape[0]), int(lead.shape[1])
    dev = lead.device
    if position_ids is not None:
        position_ids = position_ids.expand(B, S)
    kept = None if attention_mask is None else _host(attention_mask != 0)
    plan = varlen.make_plan(kept, _host(position_ids), (B, S))
    token_index = torch.from_numpy(plan.token_index).to(dev)
    exact = plan.num_tokens == len(plan.token_index)  # no dummies: no extra row to index

    def take(x: torch.Tensor | None) -> torch.Tensor | None:
        """(B, S, ...) -> (1, T, ...), 0 at dummies."""
        if x is None:
            return None
        flat = x.reshape((B * S,) + tuple(x.shape[2:]))
        if not exact:
            flat = torch.cat([flat, flat.new_zeros((1,) + tuple(flat.shape[1:]))])
        return flat[token_index][None]

    if position_ids is None:
        position_ids = torch.arange(S, device=dev).expand(B, S)
    inputs = {"input_ids": take(input_ids), "token_type_ids": take(token_type_ids),
              "position_ids": take(position_ids), "inputs_embeds": take(inputs_embeds)}

    allowed = varlen.block_allowed(plan, causal=config.is_decoder)                     # G,1,L | G,L,L
    mask = None
    if not allowed.all():
        allowed_t = torch.from_numpy(allowed).to(dev)
        mask = torch.zeros(allowed.shape, dtype=mask_dtype, device=dev).masked_fill_(
            ~allowed_t, torch.finfo(mask_dtype).min)[:, None]                                  # G,1,1|L,L
    relative = None
    if config.position_embedding_type != "absolute":
        relative = torch.from_numpy(varlen.block_relative_index(plan, config.max_position_embeddings, shared=True).astype(np.int64)).to(dev)
    blocks = Blocks(gather=torch.from_numpy(plan.gather.astype(np.int64)).to(dev),
                    slot=torch.from_numpy(plan.slot.astype(np.int64)).to(dev), mask=mask, relative=relative)
    return Unpadded(inputs, blocks, token_index, (B, S))


def to_blocks(x: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Packed heads (1, N, T, D) -> per-sequence blocks (G, N, L, D)."""
    return x[0].transpose(0, 1)[blocks.gather].transpose(1, 2)


def from_blocks(x: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Blocks (G, N, L, D) -> packed heads (1, N, T, D): each token read back from its slot."""
    G, N, L, D = x.shape
    return x.transpose(1, 2).reshape(G * L, N, D)[blocks.slot].transpose(0, 1)[None]


def scatter(x: torch.Tensor, token_index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Packed (1, T, H) -> padded (B, S, H) with 0 at dropped tokens (dummies land in a discarded row)."""
    B, S = shape
    out = x.new_zeros((B * S + 1, x.shape[-1])).index_copy(0, token_index, x[0])
    return out[:-1].view(B, S, x.shape[-1])


def _map_hidden(enc: dict, fn) -> dict:
    """The encoder's output dict with ``fn`` applied to ``last_hidden_state`` and each ``hidden_states``."""
    hidden = enc["hidden_states"]
    return {**enc, "last_hidden_state": fn(enc["last_hidden_state"]),
            "hidden_states": None if hidden is None else tuple(fn(h) for h in hidden)}


def scatter_outputs(enc: dict, unpadded: Unpadded) -> dict:
    """The encoder's packed ``last_hidden_state`` and ``hidden_states`` (1, T, H) back to (B, S, H)."""
    def back(x: torch.Tensor) -> torch.Tensor:
        return scatter(x, unpadded.token_index, unpadded.shape)
    return _map_hidden(enc, back)


# ------------------------------------------------------------------------------------------ segments mode
def segment_ids(attention_mask: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, S) 0/1 mask [+ (B, S) / (1, S) position ids] -> (B, S) int64: 0 dropped, else 1, 2, ...
    numbering the sequences of each row (``varlen.segment_ids`` in torch ops, traceable)."""
    kept = attention_mask != 0
    k = kept.long()
    start = kept & (k.cumsum(-1) == 1)                                   # first kept token of the row
    if position_ids is not None:
        start = start | (kept & (position_ids.expand_as(attention_mask) == 0))
    return start.long().cumsum(-1) * k


def segment_mask(attention_mask: torch.Tensor, position_ids: torch.Tensor | None, dtype: torch.dtype,
                 causal: bool) -> torch.Tensor:
    """Additive (B, 1, S, S) mask [query, key]: 0 where both tokens are kept and in the same sequence
    (and key column <= query column for decoders), ``finfo(dtype).min`` elsewhere."""
    seg = segment_ids(attention_mask, position_ids)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)              # B,S,S
    if causal:
        S = seg.shape[-1]
        allowed = allowed & torch.ones(S, S, dtype=torch.bool, device=seg.device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def zero_dropped(enc: dict, attention_mask: torch.Tensor) -> dict:
    """``last_hidden_state`` and ``hidden_states`` (B, S, H) with 0 at dropped tokens, as unpad gives."""
    kept = (attention_mask != 0)[..., None]                                             # B,S,1

    def zero(x: torch.Tensor) -> torch.Tensor:
        return x * kept.to(x.dtype)
    return _map_hidden(enc, zero)

"""BERT in PyTorch: ``torch.nn.Module``s whose attribute names are the canonical checkpoint names.

Read top to bottom: helpers, embeddings, attention, layer, encoder, pooler, the model, the heads, loading.
A canonical state dict (Hugging Face PyTorch names, ``bert_common.weights``) loads by name because every
sub-module is called what the checkpoint calls it (``encoder.layer.3.attention.self.query``). Every rule
that is not a tensor operation (labels, cache, head mask, multiple choice, attention path) comes from
``bert_common.semantics``; plumbing lives in ``bert_torch._runtime`` (host checks, conversions),
``bert_torch._base`` (construction, loading, decoding bodies) and ``bert_torch._losses``.

Shape legend: B batch, S query length, P cached (past) length, K key length (P + S), E encoder length,
H hidden, N heads, D head dim (H / N), I intermediate, V vocab, L labels, C choices.

Attention is chosen per call from ``config.attn_implementation``: ``"eager"`` (the reference: explicit
scores, fp32 softmax, returns probabilities), ``"sdpa"`` (default: ``F.scaled_dot_product_attention``;
relative-position scores are folded into its additive bias, so every position type runs fused) or
``"varlen"`` (unpadded: the layers run on the real tokens only and attend per sequence; ``bert_torch._varlen``).
A call that needs probabilities (``output_attentions``) or scales them (``head_mask``) runs eager even under
SDPA and warns once per model.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.weights import LoadReport
from bert_torch import _varlen
from bert_torch._base import BACKEND, ModelBase
from bert_torch._losses import _ce, causal_lm_loss, sequence_classification_loss, span_loss
from bert_torch._runtime import DTYPES, HALF, all_ones, as_tensor, resolve_dtype, validate

__all__ = ["DTYPES", "resolve_dtype"]  # re-exported plumbing (adapters import resolve_dtype from here)
IGNORE_INDEX = semantics.IGNORE_INDEX

# == helpers =================================================================================================
# config.gelu_variant -> elementwise function. "gelu_tanh" is the tanh approximation (HF gelu_new and
# gelu_pytorch_tanh agree with it to ~1e-7), "gelu_exact" the erf form.
ACTIVATIONS = {
    "gelu_exact": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


class FP32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that normalises in fp32 and casts back, so half-precision models keep fp32
    statistics. (..., H) -> (..., H), same dtype as the input. Identical to ``nn.LayerNorm`` in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in HALF:
            return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype, query_length: int = 1, past_length: int = 0,
                  causal: bool = False) -> torch.Tensor:
    """(B, K) 1 = attend -> additive (B, 1, 1, K), or (B, 1, S, K) when ``causal``.

    Kept entries are 0, dropped ones ``finfo(dtype).min`` (finite, so a fully masked row gives uniform
    probabilities rather than NaN). The causal mask is multiplied in before converting, so query
    ``P + i`` sees keys ``0 .. P + i``.
    """
    m = mask[:, None, None, :].to(dtype)                                                  # B,1,1,K
    if causal:
        key_pos = torch.arange(mask.shape[-1], device=mask.device)                        # K
        query_pos = past_length + torch.arange(query_length, device=mask.device)          # S
        m = m * (key_pos[None, :] <= query_pos[:, None]).to(dtype)                        # B,1,S,K
    return (1.0 - m) * torch.finfo(dtype).min


# == embeddings ==============================================================================================
class BertEmbeddings(nn.Module):
    """word + token type (+ absolute position) embeddings, LayerNorm, dropout -> (B, S, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        # padding_idx only stops gradient into the pad row (HF does the same); the lookup is unchanged.
        self.word_embeddings = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        # Built for every position type (the checkpoint always has it); only "absolute" adds it.
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.LayerNorm = FP32LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_length: int = 0) -> torch.Tensor:
        """ids (B, S) int64 or ``inputs_embeds`` (B, S, H) -> (B, S, H). Defaults: positions
        ``P + arange(S)``, token types 0."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds           # B,S,H
        B, S = x.shape[:2]
        if token_type_ids is None:
            token_type_ids = torch.zeros((B, S), dtype=torch.long, device=x.device)
        x = x + self.token_type_embeddings(token_type_ids)
        if self.absolute:
            if position_ids is None:
                position_ids = past_length + torch.arange(S, device=x.device)[None, :]          # 1,S
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


# == attention ===============================================================================================
class BertSelfAttention(nn.Module):
    """Multi-head attention; ``is_cross_attention`` attends to encoder states (always absolute positions)."""

    def __init__(self, config: BertConfig, is_cross_attention: bool = False):
        super().__init__()
        H, self.N, self.D = config.hidden_size, config.num_attention_heads, config.head_dim
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.is_cross_attention = is_cross_attention
        self.position_embedding_type = "absolute" if is_cross_attention else config.position_embedding_type
        self.max_positions = config.max_position_embeddings
        if self.position_embedding_type != "absolute":
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.D)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, N, T, D)."""
        return x.view(x.shape[0], x.shape[1], self.N, self.D).transpose(1, 2)

    def _relative_scores(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Unscaled relative-position scores (B, N, S, K): q·r (+ k·r for relative_key_query); ``index``
        into ``distance_embedding`` is (S, K) for every row, or (B, S, K) (varlen blocks)."""
        r = self.distance_embedding(index).to(q.dtype)                                        # [B,]S,K,D
        b = "b" if index.dim() == 3 else ""
        scores = torch.einsum(f"bnsd,{b}skd->bnsk", q, r)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum(f"bnkd,{b}skd->bnsk", k, r)
        return scores

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_value=None, eager: bool = True):
        """hidden_states (B, S, H); ``attention_mask`` additive (B, 1, 1|S, K), None, or varlen ``Blocks``
        (hidden_states then (1, T, H) packed tokens); ``head_mask`` (N,)
        or None; ``past_key_value``: cached (k, v), each (B, N, P, D) (cross-attention: the encoder's k, v).

        Returns (context (B, S, H), probabilities (B, N, S, K) or None when fused, (k, v) to cache).
        """
        q = self._split(self.query(hidden_states))                                           # B,N,S,D
        past_length = 0
        if self.is_cross_attention:
            if past_key_value is not None:  # encoder keys/values were computed on the first call
                k, v = past_key_value
            else:
                k = self._split(self.key(encoder_hidden_states))                             # B,N,E,D
                v = self._split(self.value(encoder_hidden_states))
        else:
            k, v = self._split(self.key(hidden_states)), self._split(self.value(hidden_states))  # B,N,S,D
            if past_key_value is not None:
                past_length = past_key_value[0].shape[2]
                k = torch.cat([past_key_value[0], k], dim=2)                                  # B,N,K,D
                v = torch.cat([past_key_value[1], v], dim=2)
        blocks = attention_mask if isinstance(attention_mask, _varlen.Blocks) else None
        if blocks is not None:  # varlen "unpad": packed (1, N, T, D) -> per-sequence blocks (G, N, L, D)
            q, k, v, attention_mask = *(_varlen.to_blocks(t, blocks) for t in (q, k, v)), blocks.mask
        relative = None
        if self.position_embedding_type != "absolute":
            # clipped: a varlen "segments" row may be longer than max_positions (its cross-sequence pairs
            # are masked but must still index a real row); a no-op for rows the padded path accepts
            index = blocks.relative if blocks is not None else semantics.relative_distance_index(
                lambda n: torch.arange(n, device=q.device), q.shape[2], k.shape[2], past_length,
                self.max_positions).clamp(0, 2 * self.max_positions - 2)                      # S,K
            relative = self._relative_scores(q, k, index)                                     # B,N,S,K
        scale = 1.0 / math.sqrt(self.D)
        probs = None
        if eager:
            scores = q @ k.transpose(-1, -2)                                                  # B,N,S,K
            if relative is not None:
                scores = scores + relative
            # softmax accumulates in fp32 for half dtypes (and stays float64 for a float64 reference)
            scores = (scores / math.sqrt(self.D)).to(torch.promote_types(scores.dtype, torch.float32))
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = self.dropout(torch.softmax(scores, dim=-1).to(q.dtype))
            if head_mask is not None:
                probs = probs * head_mask[None, :, None, None]
            context = probs @ v                                                               # B,N,S,D
        else:
            bias = attention_mask
            if relative is not None:
                bias = relative * scale if bias is None else relative * scale + bias
                if bias.dtype in HALF:  # min + a negative score must not round to -inf (an all -inf row is NaN)
                    bias = bias.clamp_min(torch.finfo(bias.dtype).min)
            p_drop = self.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop, scale=scale)
        if blocks is not None:
            context = _varlen.from_blocks(context, blocks)                                    # 1,N,T,D
        B, _, S, _ = context.shape
        context = context.transpose(1, 2).reshape(B, S, self.N * self.D)                      # B,S,H
        return context, probs, (k, v)


class BertSelfOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual): (B, S, H) -> (B, S, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = FP32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    """``self`` (attention) then ``output`` (projection + residual + LayerNorm)."""

    def __init__(self, config: BertConfig, is_cross_attention: bool = False):
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_value=None, eager=True):
        """(B, S, H) -> ((B, S, H), probabilities or None, (k, v))."""
        context, probs, present = self.self(hidden_states, attention_mask, head_mask, encoder_hidden_states,
                                            past_key_value, eager)
        return self.output(context, hidden_states), probs, present


# == layer ===================================================================================================
class BertIntermediate(nn.Module):
    """activation(dense(x)): (B, S, H) -> (B, S, I)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.gelu_variant]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual): (B, S, I), (B, S, H) -> (B, S, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = FP32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention, feed-forward (chunked along S per the config)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.attention = BertAttention(config)
        if config.add_cross_attention:
            self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> (B, S, H), one ``semantics.feed_forward_chunks`` slice at a time."""
        chunks = semantics.feed_forward_chunks(self.config, x.shape[1])
        parts = [self.output(self.intermediate(x[:, a:b]), x[:, a:b]) for a, b in chunks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_value=None, eager=True):
        """hidden_states (B, S, H); ``past_key_value`` None or (self_k, self_v[, cross_k, cross_v]).

        Returns (hidden (B, S, H), self probs, cross probs, present cache entry). Cross-attention runs when
        encoder states are given or their keys/values are cached (later decoding steps).
        """
        self_past = None if past_key_value is None else past_key_value[:2]
        x, self_probs, present = self.attention(hidden_states, attention_mask, head_mask, None, self_past, eager)
        cross_probs = None
        cross_past = past_key_value[2:4] if past_key_value is not None and len(past_key_value) == 4 else None
        if hasattr(self, "crossattention") and (encoder_hidden_states is not None or cross_past is not None):
            x, cross_probs, cross_present = self.crossattention(x, encoder_attention_mask, head_mask,
                                                                encoder_hidden_states, cross_past, eager)
            present = present + cross_present
        return self.feed_forward(x), self_probs, cross_probs, present


# == encoder =================================================================================================
class BertEncoder(nn.Module):
    """``layer.{i}`` for i < num_hidden_layers; collects hidden states, attentions and the cache."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = bool(config.gradient_checkpointing)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_values=None, use_cache=False, output_attentions=False,
                output_hidden_states=False, eager=True) -> dict:
        """hidden_states (B, S, H) -> dict of last_hidden_state, hidden_states (L+1 × (B, S, H)), attentions
        and cross_attentions (L × (B, N, S, K|E)), past_key_values (L × 2|4 × (B, N, K|E, D))."""
        hidden = hidden_states
        all_hidden, all_attn, all_cross, cache = [], [], [], []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden)
            args = (hidden, attention_mask, None if head_mask is None else head_mask[i], encoder_hidden_states,
                    encoder_attention_mask, None if past_key_values is None else past_key_values[i], eager)
            if self.gradient_checkpointing and self.training:
                # Recompute the layer in backward instead of storing its activations.
                hidden, probs, cross_probs, present = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden, probs, cross_probs, present = layer(*args)
            if output_attentions:
                all_attn.append(probs)
                if cross_probs is not None:
                    all_cross.append(cross_probs)
            if use_cache:
                cache.append(present)
        if output_hidden_states:
            all_hidden.append(hidden)
        return {
            "last_hidden_state": hidden,
            "hidden_states": tuple(all_hidden) if output_hidden_states else None,
            "attentions": tuple(all_attn) if output_attentions else None,
            "cross_attentions": tuple(all_cross) if output_attentions and all_cross else None,
            "past_key_values": tuple(cache) if use_cache else None,
        }


# == pooler ==================================================================================================
class BertPooler(nn.Module):
    """tanh(dense(h[:, 0])): (B, S, H) -> (B, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


# == model ===================================================================================================
class BertPreTrainedModel(ModelBase, nn.Module):
    """Shared glue: construction from canonical weights, dtype, loading/saving, checkpointing, warnings.

    ``Cls(config, add_pooling_layer=None, seed=0)`` builds a model whose weights are
    ``bert_common.weights.init_weights(config, Cls.__name__, seed)``, identical in every backend. The
    private plumbing (construction, warnings, output packing, call checks) is ``bert_torch._base.ModelBase``.
    """

    model_class = "BertModel"

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise ValueError(f"config must be a bert_common.BertConfig, got {type(config).__name__}")
        semantics.check_head_config(self.model_class, config)
        self.config = config
        self.load_report: LoadReport | None = None
        self._warned: set[str] = set()

    # -- properties
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def attn_implementation(self) -> str:
        return self.config.attn_implementation or semantics.DEFAULT_ATTN_IMPLEMENTATION[BACKEND]

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in backward (training mode only); also on with
        ``config.gradient_checkpointing``."""
        for m in self.modules():
            if isinstance(m, BertEncoder):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, BertEncoder):
                m.gradient_checkpointing = False

    # ========================================================================================== loading
    def canonical_state_dict(self, dtype: Any = "float32") -> dict[str, np.ndarray]:
        """``{canonical name: np.ndarray}`` of every parameter, in ``canonical_shapes`` order.

        ``dtype``: "float32" (default), or None to keep the model's dtype (bfloat16 via ml_dtypes)."""
        return self._canonical_state_dict(dtype)

    def load_canonical_state_dict(self, state: Mapping[str, np.ndarray], allow_new_head: bool = False,
                                  _exact: bool = False) -> LoadReport:
        """Copy a canonical state dict into the parameters (prefix added/stripped, tied aliases folded,
        mismatches raise ``WeightMappingError`` naming each tensor). Returns the load report."""
        return self._load_canonical_state_dict(state, allow_new_head, _exact)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, config: BertConfig | None = None,
                        allow_new_head: bool = False, add_pooling_layer: bool | None = None, dtype: Any = None,
                        torch_dtype: Any = None, attn_implementation: str | None = None,
                        state: Mapping[str, np.ndarray] | None = None, seed: int = 0, **config_overrides: Any):
        """Load ``path`` (config.json + weights in any supported format) into an inference-ready model.

        ``dtype`` / ``torch_dtype``: torch.float32 (default), torch.bfloat16, torch.float16 or their names;
        ``attn_implementation``: "sdpa" (default) or "eager"; other keywords override config fields.
        ``state`` (canonical names) may replace the weight files. The load report is ``model.load_report``.
        """
        return cls._from_pretrained(path, config, allow_new_head, add_pooling_layer, dtype, torch_dtype,
                                    attn_implementation, state, seed, config_overrides)

    def save_pretrained(self, path: str | os.PathLike, shard_size: str | int | None = None) -> str:
        """Write ``config.json`` + ``model.safetensors`` (canonical layout, the model's dtype)."""
        return self._save_pretrained(path, shard_size)


class BertModel(BertPreTrainedModel):
    """Embeddings, encoder and (optional) pooler; the body every head wraps as ``bert``."""

    model_class = "BertModel"

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int | None = 0,
                 _nested: bool = False):
        super().__init__(config)
        with self._building():
            self.embeddings = BertEmbeddings(config)
            self.encoder = BertEncoder(config)
            pool = semantics.add_pooling_layer(self.model_class, add_pooling_layer)
            self.pooler = BertPooler(config) if pool else None
        self._finish(seed, add_pooling_layer, nested=_nested)

    def head_mask_per_layer(self, head_mask) -> torch.Tensor | None:
        """(N,) or (L, N) float -> (L, N) in the model dtype; (N,) is shared by every layer."""
        if head_mask is None:
            return None
        L, N = self.config.num_hidden_layers, self.config.num_attention_heads
        hm = as_tensor(head_mask, self.device, self.dtype).to(device=self.device, dtype=self.dtype)
        return hm.expand(L, N) if semantics.head_mask_kind(self.config, hm.shape) == "shared" else hm

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """ids (B, S) int (NumPy accepted) or ``inputs_embeds`` (B, S, H) -> output with last_hidden_state
        (B, S, H), pooler_output (B, H), and on request hidden_states, attentions, cross_attentions,
        past_key_values (see ``BertEncoder``)."""
        c = self.config
        dev, dt = self.device, self.dtype
        input_ids, attention_mask, token_type_ids, position_ids = (
            as_tensor(x, dev) for x in (input_ids, attention_mask, token_type_ids, position_ids))
        inputs_embeds = as_tensor(inputs_embeds, dev, dt)
        encoder_hidden_states = as_tensor(encoder_hidden_states, dev, dt)
        encoder_attention_mask = as_tensor(encoder_attention_mask, dev)
        output_attentions, output_hidden_states, _ = semantics.resolve_flags(c, output_attentions,
                                                                             output_hidden_states)
        checkpointing = self.encoder.gradient_checkpointing and self.training
        if use_cache and checkpointing and c.is_decoder:
            self._warn_once("checkpoint_cache", "use_cache=True is incompatible with gradient checkpointing "
                                                "in training; no cache is returned")
        use_cache = semantics.use_cache(c, self.model_class, use_cache, checkpointing_in_training=checkpointing)
        if encoder_hidden_states is not None and not c.add_cross_attention:
            raise ValueError("encoder_hidden_states was given but config.add_cross_attention=False")
        past_length = self._check_cache(past_key_values)
        concrete = not (torch.compiler.is_compiling() or torch.jit.is_tracing())
        mode = semantics.varlen_mode(c, concrete, output_attentions, {
            "encoder_hidden_states": encoder_hidden_states, "past_key_values": past_key_values})
        use_cache = use_cache and mode is None  # varlen rows are not extended by a cache
        validate(c, input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds, past_length,
                 encoder_hidden_states, encoder_attention_mask, packed=semantics.packed_rows(c, position_ids))

        eager, note = semantics.attention_path(c, BACKEND, output_attentions, head_mask is not None)
        if note:
            self._warn_once("sdpa_fallback", note)
        mask_dtype = DTYPES[semantics.mask_dtype(eager, str(dt).removeprefix("torch."))]
        if mode == "unpad":  # dense layers on the T kept tokens (1, T, H), attention within each sequence
            u = _varlen.unpad(c, input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask, mask_dtype)
            enc = self.encoder(self.embeddings(**u.inputs), u.blocks, self.head_mask_per_layer(head_mask),
                               output_hidden_states=output_hidden_states, eager=eager)
            enc = _varlen.scatter_outputs(enc, u)                                              # B,S,H
            pooled = self.pooler(enc["last_hidden_state"]) if self.pooler is not None else None
            return self._return(return_dict, pooler_output=pooled, **enc)

        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)  # B,S,H
        B, S = x.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones((B, past_length + S), dtype=torch.long, device=dev)
        if mode == "segments":  # varlen in the padded layout: attention confined by an in-graph mask
            mask = _varlen.segment_mask(attention_mask, position_ids, mask_dtype, c.is_decoder)  # B,1,S,S
        elif c.is_decoder:
            mask = additive_mask(attention_mask, mask_dtype, S, past_length, causal=True)     # B,1,S,K
        elif not torch.compiler.is_compiling() and all_ones(attention_mask):
            mask = None  # nothing to mask: adding zeros is exact, skipping it lets SDPA use its fastest kernel
        else:
            mask = additive_mask(attention_mask, mask_dtype)                                   # B,1,1,K
        encoder_mask = None
        if encoder_attention_mask is not None:
            encoder_mask = additive_mask(encoder_attention_mask, mask_dtype)                   # B,1,1,E

        enc = self.encoder(x, mask, self.head_mask_per_layer(head_mask), encoder_hidden_states, encoder_mask,
                           past_key_values, use_cache, output_attentions, output_hidden_states, eager)
        if mode == "segments":
            enc = _varlen.zero_dropped(enc, attention_mask)
        pooled = self.pooler(enc["last_hidden_state"]) if self.pooler is not None else None
        return self._return(return_dict, pooler_output=pooled, **enc)


# == heads ===================================================================================================
class BertPredictionHeadTransform(nn.Module):
    """LayerNorm(activation(dense(x))): (B, S, H) -> (B, S, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.gelu_variant]
        self.LayerNorm = FP32LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then ``decoder`` (weight tied to the word embeddings by default) + ``bias``:
    (B, S, H) -> (B, S, V)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(x), self.decoder.weight, self.bias)


class BertPreTrainingHeads(nn.Module):
    """The ``cls`` block: ``predictions`` (MLM, (B, S, H) -> (B, S, V)) and/or ``seq_relationship``
    (NSP, (B, H) -> (B, 2))."""

    def __init__(self, config: BertConfig, mlm: bool = True, nsp: bool = True):
        super().__init__()
        if mlm:
            self.predictions = BertLMPredictionHead(config)
        if nsp:
            self.seq_relationship = nn.Linear(config.hidden_size, 2)


class _HeadModel(BertPreTrainedModel):
    """Base of every head: owns ``bert`` (its pooler per ``semantics.add_pooling_layer``) and the head
    modules ``_build_head`` creates; validates and converts labels; ties the MLM decoder."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int | None = 0):
        super().__init__(config)
        with self._building():
            self.bert = BertModel(config, add_pooling_layer=semantics.add_pooling_layer(
                self.model_class, add_pooling_layer), seed=None, _nested=True)
            self._build_head(config)
        self._finish(seed, add_pooling_layer)

    def _build_head(self, config: BertConfig) -> None:
        raise NotImplementedError

    def _tie_weights(self) -> None:
        predictions = getattr(getattr(self, "cls", None), "predictions", None)
        if predictions is not None and self.config.tie_word_embeddings:
            predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight


class BertForPreTraining(_HeadModel):
    """MLM + next-sentence heads. Loss = MLM CE + NSP CE when both ``labels`` and ``next_sentence_label``."""

    model_class = "BertForPreTraining"

    def _build_head(self, config: BertConfig) -> None:
        self.cls = BertPreTrainingHeads(config, mlm=True, nsp=True)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, next_sentence_label=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """-> prediction_logits (B, S, V), seq_relationship_logits (B, 2), loss ()."""
        lab = self._labels({"labels": labels, "next_sentence_label": next_sentence_label}, input_ids, inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        mlm = self.cls.predictions(out["last_hidden_state"])
        nsp = self.cls.seq_relationship(out["pooler_output"])
        loss = None if lab is None else _ce(mlm, lab["labels"]) + _ce(nsp, lab["next_sentence_label"])
        return self._return(return_dict, loss=loss, prediction_logits=mlm, seq_relationship_logits=nsp,
                            **self._encoder_outputs(out))


class BertLMHeadModel(_HeadModel):
    """Causal LM (needs ``config.is_decoder``); loss is next-token CE. ``generate`` decodes with the cache."""

    model_class = "BertLMHeadModel"

    def _build_head(self, config: BertConfig) -> None:
        self.cls = BertPreTrainingHeads(config, mlm=True, nsp=False)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """-> logits (B, S, V), loss () with ``labels`` (B, S), past_key_values when caching."""
        lab = self._labels({"labels": labels}, input_ids, inputs_embeds)
        use_cache = semantics.use_cache(self.config, self.model_class, use_cache, has_labels=lab is not None)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, past_key_values, use_cache,
                        output_attentions, output_hidden_states, return_dict=True)
        logits = self.cls.predictions(out["last_hidden_state"])
        loss = None if lab is None else causal_lm_loss(logits, lab["labels"])
        return self._return(return_dict, loss=loss, logits=logits, past_key_values=out.get("past_key_values"),
                            cross_attentions=out.get("cross_attentions"), **self._encoder_outputs(out))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 encoder_hidden_states=None, encoder_attention_mask=None) -> np.ndarray:
        """Greedy or top-k/top-p sampled continuation with the cache; (B, S) -> (B, S + n) int64 NumPy.

        The loop and the sampling are ``bert_common.generation.generate`` (shared NumPy code), so a seed
        gives the same tokens in every backend. ``eos_token_id`` (default ``config.eos_token_id``) ends a
        row, which is then filled with ``pad_token_id`` (default ``config.pad_token_id``). Encoder states
        are passed on every step; their keys/values are computed on the first and reused from the cache."""
        return self._generate(input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                              encoder_attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              top_k=top_k, top_p=top_p, temperature=temperature, seed=seed)


class BertForMaskedLM(_HeadModel):
    """Masked LM; loss is CE over labels != -100."""

    model_class = "BertForMaskedLM"

    def _build_head(self, config: BertConfig) -> None:
        self.cls = BertPreTrainingHeads(config, mlm=True, nsp=False)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        """-> logits (B, S, V), loss () with ``labels`` (B, S)."""
        lab = self._labels({"labels": labels}, input_ids, inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.cls.predictions(out["last_hidden_state"])
        loss = None if lab is None else _ce(logits, lab["labels"])
        return self._return(return_dict, loss=loss, logits=logits, **self._encoder_outputs(out))


class BertForNextSentencePrediction(_HeadModel):
    """Is sentence B the continuation of A: logits (B, 2) from the pooled output; CE loss."""

    model_class = "BertForNextSentencePrediction"

    def _build_head(self, config: BertConfig) -> None:
        self.cls = BertPreTrainingHeads(config, mlm=False, nsp=True)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """-> logits (B, 2), loss () with ``labels`` (B,) (0 = B continues A); ``next_sentence_label`` is
        HF's deprecated name for ``labels`` (FutureWarning)."""
        labels = semantics.check_call_args(self.model_class, {"labels": labels, **kwargs}).get("labels")
        lab = self._labels({"labels": labels}, input_ids, inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        logits = self.cls.seq_relationship(out["pooler_output"])                              # B,2
        loss = None if lab is None else _ce(logits, lab["labels"])
        return self._return(return_dict, loss=loss, logits=logits, **self._encoder_outputs(out))


class BertForSequenceClassification(_HeadModel):
    """logits (B, L) from the pooled output; loss by ``semantics.problem_type``."""

    model_class = "BertForSequenceClassification"

    def _build_head(self, config: BertConfig) -> None:
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """-> logits (B, L), loss () with ``labels``: (B,) int, (B,) / (B, L) float (regression, multi-label)."""
        lab = self._labels({"labels": labels}, input_ids, inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        logits = self.classifier(self.dropout(out["pooler_output"]))                         # B,L
        loss = None if lab is None else sequence_classification_loss(logits, lab["labels"], self.config)
        return self._return(return_dict, loss=loss, logits=logits, **self._encoder_outputs(out))


class BertForMultipleChoice(_HeadModel):
    """ids (B, C, S) -> logits (B, C): one score per choice from its pooled output; CE over choices."""

    model_class = "BertForMultipleChoice"

    def _build_head(self, config: BertConfig) -> None:
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """ids / masks (B, C, S) or ``inputs_embeds`` (B, C, S, H) -> logits (B, C), loss () with ``labels`` (B,);
        hidden states and attentions are per flattened choice (B*C, ...)."""
        dev = self.device
        given = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     position_ids=position_ids, inputs_embeds=inputs_embeds)
        given = {k: as_tensor(v, dev, self.dtype if k == "inputs_embeds" else None) for k, v in given.items()}
        C, plan = semantics.choice_plan({k: None if v is None else v.shape for k, v in given.items()})
        lab = self._labels({"labels": labels}, given["input_ids"], given["inputs_embeds"])
        flat = {k: None if v is None else v.reshape(plan[k]) for k, v in given.items()}
        out = self.bert(**flat, head_mask=head_mask, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out["pooler_output"])).view(-1, C)              # B,C
        loss = None if lab is None else _ce(logits, lab["labels"])
        return self._return(return_dict, loss=loss, logits=logits, **self._encoder_outputs(out))


class BertForTokenClassification(_HeadModel):
    """logits (B, S, L) per token; CE over labels != -100."""

    model_class = "BertForTokenClassification"

    def _build_head(self, config: BertConfig) -> None:
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        """-> logits (B, S, L), loss () with ``labels`` (B, S) (-100 = ignored)."""
        lab = self._labels({"labels": labels}, input_ids, inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        logits = self.classifier(self.dropout(out["last_hidden_state"]))                      # B,S,L
        loss = None if lab is None else _ce(logits, lab["labels"])
        return self._return(return_dict, loss=loss, logits=logits, **self._encoder_outputs(out))


class BertForQuestionAnswering(_HeadModel):
    """Span extraction: ``qa_outputs`` gives start and end logits (B, S) each; needs num_labels == 2."""

    model_class = "BertForQuestionAnswering"

    def _build_head(self, config: BertConfig) -> None:
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """-> start_logits, end_logits (B, S) each; loss () with ``start_positions`` and ``end_positions`` (B,)."""
        lab = self._labels({"start_positions": start_positions, "end_positions": end_positions}, input_ids,
                           inputs_embeds)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        logits = self.qa_outputs(out["last_hidden_state"])                                    # B,S,2
        start, end = logits[..., 0].contiguous(), logits[..., 1].contiguous()                # B,S each
        loss = None if lab is None else span_loss(start, end, lab["start_positions"], lab["end_positions"])
        return self._return(return_dict, loss=loss, start_logits=start, end_logits=end,
                            **self._encoder_outputs(out))


# == loading =================================================================================================
# from_pretrained / save_pretrained / canonical_state_dict live on BertPreTrainedModel (above); this is
# the name -> class table (bert_common.semantics order) the adapters and bert_common.auto use.
MODEL_CLASSES: dict[str, type[BertPreTrainedModel]] = semantics.class_table(
    (BertModel, BertForPreTraining, BertLMHeadModel, BertForMaskedLM, BertForNextSentencePrediction,
     BertForSequenceClassification, BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering))


def build(model_class: str, config: BertConfig, state: Mapping[str, np.ndarray] | None = None, seed: int = 0,
          add_pooling_layer: bool | None = None) -> BertPreTrainedModel:
    """A model of ``model_class`` from a canonical state dict (or fresh weights from ``seed``)."""
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class={model_class!r} is not one of {list(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[model_class]
    if state is None:
        return cls(config, add_pooling_layer=add_pooling_layer, seed=seed)
    model = cls(config, add_pooling_layer=add_pooling_layer, seed=None)
    model.load_canonical_state_dict(state)
    return model

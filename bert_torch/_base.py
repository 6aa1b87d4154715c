"""The private half of ``modeling.BertPreTrainedModel``: construction on the meta device, warnings given once,
output packing, cache and label checks, and the bodies of the loading / saving / decoding methods, so that
``modeling.py`` reads as the module tree. Nothing here owns a parameter or a sub-module."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import numpy as np
import torch

from bert_common import pretrained as _pretrained
from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.generation import generate as _generate
from bert_common.model_base import SharedModelBase
from bert_common.weights import LoadReport, canonical_shapes, init_weights, match_state_dict
from bert_torch._runtime import as_labels, as_tensor, materialize, meta_device, resolve_dtype, validate_labels

BACKEND = "torch"


class ModelBase(SharedModelBase):
    """Mixed into ``BertPreTrainedModel`` (an ``nn.Module`` with ``config``, ``model_class``, ``_warned``)."""

    # -- construction: sub-modules are built on the meta device (no wasted random init), then filled.
    @contextlib.contextmanager
    def _building(self):
        with meta_device():  # no init on meta tensors: PyTorch's meta init kernels import torch._dynamo
            yield

    def _finish(self, seed: int | None, add_pooling_layer: bool | None, nested: bool = False) -> None:
        self.add_pooling_layer = semantics.add_pooling_layer(self.model_class, add_pooling_layer)
        if nested:  # the enclosing head materialises and fills every parameter once
            return
        materialize(self)
        self._tie_weights()
        if seed is not None:
            self.load_canonical_state_dict(init_weights(self.config, self.model_class, seed,
                                                        self.add_pooling_layer), _exact=True)
        self.eval()  # inference-ready; call .train() for training

    def _tie_weights(self) -> None:
        """Heads with an MLM decoder share the word embedding matrix (when the config ties them)."""

    def _return(self, return_dict: bool | None, **fields: Any):
        return super()._return(semantics.resolve_flags(self.config, return_dict=return_dict)[2], **fields)

    # -- call checks
    def _check_cache(self, past_key_values) -> int:
        """Validate the cache structure; returns the cached length P."""
        if past_key_values is None:
            return 0
        if not self.config.is_decoder:
            raise ValueError("past_key_values was given but config.is_decoder=False; the cache is only "
                             "defined for decoders")
        L = self.config.num_hidden_layers
        if len(past_key_values) != L or any(len(p) not in (2, 4) for p in past_key_values):
            raise ValueError(f"past_key_values must be a tuple of {L} (= config.num_hidden_layers) tuples of 2 "
                             f"or 4 tensors (B, N, K, D), got {len(past_key_values)} entries")
        return int(past_key_values[0][0].shape[2])

    def _labels(self, labels: dict, input_ids, inputs_embeds) -> dict | None:
        """Labels (NumPy or torch) -> tensors on the model's device, checked against the ids' shape
        (``bert_common.validation.check_labels``); None when the class's loss is not requested."""
        if not semantics.has_loss(self.model_class, labels):
            return None
        out = {k: as_labels(v, self.device) for k, v in labels.items() if v is not None}
        lead = input_ids if input_ids is not None else inputs_embeds
        shape = tuple(lead.shape if hasattr(lead, "shape") else np.shape(lead))
        shape = shape if input_ids is not None else shape[:-1]
        problem = None
        if self.model_class == "BertForSequenceClassification":
            problem = semantics.problem_type(self.config, not out["labels"].dtype.is_floating_point)
        validate_labels(self.config, self.model_class, out, shape, problem)
        return out

    def _encoder_outputs(self, out: Mapping) -> dict:
        """The encoder fields every head passes through."""
        return {k: out.get(k) for k in ("hidden_states", "attentions")}

    # -- bodies of the public loading / saving / decoding methods (signatures and docs: modeling.py)
    def _canonical_state_dict(self, dtype: Any) -> dict[str, np.ndarray]:
        params = dict(self.named_parameters())  # de-duplicated: a tied decoder weight appears once
        out = {}
        for name in canonical_shapes(self.config, self.model_class, self.add_pooling_layer):
            t = params[name].detach().cpu()
            if dtype is None and t.dtype == torch.bfloat16:
                import ml_dtypes
                out[name] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            else:
                out[name] = t.to(torch.float32 if dtype is not None else t.dtype).numpy()
        return out

    def _load_canonical_state_dict(self, state: Mapping[str, np.ndarray], allow_new_head: bool,
                                   exact: bool) -> LoadReport:
        if exact:
            params, report = dict(state), LoadReport(self.model_class)
        else:
            params, report = match_state_dict(state, self.config, self.model_class, self.add_pooling_layer,
                                              allow_new_head=allow_new_head)
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name, arr in params.items():
                p = own[name]
                src = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: file buffers are read-only
                p.copy_(src.to(device=p.device, dtype=p.dtype))
        self.load_report = report
        return report

    @classmethod
    def _from_pretrained(cls, path: str | os.PathLike, config: BertConfig | None, allow_new_head: bool,
                         add_pooling_layer: bool | None, dtype: Any, torch_dtype: Any,
                         attn_implementation: str | None, state: Mapping[str, np.ndarray] | None, seed: int,
                         config_overrides: dict[str, Any]):
        if dtype is not None and torch_dtype is not None and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one of them")
        target = resolve_dtype(torch_dtype if torch_dtype is not None else dtype)
        if attn_implementation is not None:
            config_overrides["attn_implementation"] = attn_implementation
        cfg, params, report = _pretrained.load_for_backend(
            path, cls.model_class, BACKEND, config=config, allow_new_head=allow_new_head,
            add_pooling_layer=add_pooling_layer, state=state, seed=seed, **config_overrides)
        model = cls(cfg, add_pooling_layer=add_pooling_layer, seed=None)
        model.load_canonical_state_dict(params, _exact=True)
        model.load_report = report
        if target is not None:
            model.to(target)
        return model

    def _save_pretrained(self, path: str | os.PathLike, shard_size: str | int | None) -> str:
        return _pretrained.save_from_backend(path, self.canonical_state_dict(dtype=None), self.config,
                                             self.model_class, BACKEND, self.add_pooling_layer, shard_size)

    def _generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                  encoder_attention_mask, **sampling) -> np.ndarray:
        semantics.check_generate(self.config)
        eos, pad = semantics.generation_defaults(self.config, eos_token_id, pad_token_id)
        enc = as_tensor(encoder_hidden_states, self.device, self.dtype)

        def step(ids, mask, past):
            out = self(ids, attention_mask=mask, past_key_values=past, use_cache=True,
                       encoder_hidden_states=enc, encoder_attention_mask=encoder_attention_mask, return_dict=True)
            return out["logits"][:, -1].float().cpu().numpy(), out["past_key_values"]

        ids = input_ids.cpu().numpy() if isinstance(input_ids, torch.Tensor) else input_ids
        mask = attention_mask.cpu().numpy() if isinstance(attention_mask, torch.Tensor) else attention_mask
        return _generate(step, ids, mask, eos_token_id=eos, pad_token_id=pad, **sampling)

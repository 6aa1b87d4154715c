"""One adapter per backend: the narrow interface the conformance suite drives.

Each module ``conformance/adapters/<backend>.py`` (torch, tf, flax, and ``hf`` for the Hugging Face
oracle) defines the functions below, all in NumPy at the boundary so the suite itself imports no
framework. Output dicts are *flat*: ``flatten_outputs`` in ``conformance.compare`` turns a model output
into ``{"last_hidden_state": a, "hidden_states.0": a, "attentions.1": a, "past_key_values.0.1": a,
"loss": a, ...}``.

    NAME: str                                         # "torch", "tf", "flax", "hf"
    available() -> bool                               # framework importable
    devices() -> list[str]                            # "cpu", plus "gpu" when the framework sees one
    pin_tf32_off() -> str                             # disable TF32 matmuls; returns what was done
    build(model_class, config, state, dtype="float32", device="cpu") -> handle
        # model_class: a name in bert_common.weights.HEADS; state: canonical {name: np.ndarray} fp32.
        # dtype "bfloat16"/"float16": weights and matmuls in that dtype (softmax/LayerNorm in fp32).
        # dtype "float64" (adapters named in conformance.suite.TRUTH_BACKENDS: torch, hf): the float64
        # truth every verdict is calibrated on; its forward/grads/adamw_step return float64 arrays.
    forward(handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict[str, np.ndarray]   # flat, float32
        # inputs: dict of NumPy arrays named as HF forward kwargs (labels included when given).
        # train=True: training mode (dropout on, so configs in the suite set dropout 0).
        # past_key_values: the nested tuple of NumPy arrays a previous forward returned (unflattened
        # via conformance.compare.unflatten_cache).
    grads(handle, inputs) -> tuple[float, dict[str, np.ndarray]]
        # loss (float) and d loss / d parameter for every canonical parameter name (fp32).
    adamw_step(handle, inputs, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
            -> dict[str, np.ndarray]
        # one AdamW step on the loss (no decay where bert_common.weights.no_weight_decay), returns the
        # updated canonical state dict; the optimizer the backend's trainer uses (torch.optim.AdamW,
        # bert_tf.training.AdamW, bert_flax.training.adamw), one update formula in every framework.

Exported artifacts (``bertrio export``) are inference-only backends: ``onnx``, ``saved-model``
(module ``saved_model``) and ``stablehlo`` implement ``available``, ``devices``, ``pin_tf32_off``,
``build`` (export the case from the source backend, or load the directory given to
``artifact.use_artifact``) and ``forward`` (the exported fields only), plus ``CHECKS = ("forward",)`` and
``output_keys(handle)``; see ``conformance/adapters/artifact.py``.
"""
ADAPTERS = ("torch", "tf", "flax")
ARTIFACT_ADAPTERS = ("onnx", "saved-model", "stablehlo")

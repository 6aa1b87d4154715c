"""``bertrio export CHECKPOINT OUT --to onnx|saved-model|stablehlo``: a serving artifact, proven by parity.

Each format is written by one backend's exporter (``bert_torch.export``, ``bert_tf.export``,
``bert_flax.export``), reached by name through ``bert_common.backend``. The artifact lands in the directory
OUT (written to a temp directory, renamed when complete) with:

- the artifact itself (``model.onnx``, ``saved_model/`` or ``model.stablehlo``),
- ``export.json``: format, head, dtype, input names with their axes, output names (``SIDECAR``),
- ``config.json`` and the checkpoint's tokenizer files, so serving code finds labels and vocabulary.

Inputs and outputs carry Hugging Face's names (those of Optimum's ONNX export of BERT): ``input_ids``,
``attention_mask``, ``token_type_ids`` (int, axes ``batch_size``, [``num_choices``,] ``sequence_length``)
-> the output fields of the head (``last_hidden_state``, ``pooler_output``, ``logits``, ``start_logits``,
``end_logits``, ``prediction_logits``, ``seq_relationship_logits``).

Before OUT appears, the artifact is checked by the parity suite like a fourth backend (``bertrio parity
CHECKPOINT --backends SOURCE,FORMAT --heads HEAD --checks forward --artifact DIR``), reached through the
``bertrio.commands`` entry point; ``--no-verify`` skips it. Exit codes: 0 written (and verified),
1 the artifact disagrees with its source model (nothing written), 2 bad usage.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys

from bert_common.cli.base import EXIT_MISMATCH, EXIT_OK, default_checkpoint

HELP = "export a checkpoint to ONNX, a TF SavedModel or StableHLO, verified against its source model"

# format -> the backend whose model it is traced from, the file or directory it writes, and the keyword
# options of its exporter (``export(model, dir, spec, **options)``).
FORMATS: dict[str, dict] = {
    "onnx": {"backend": "torch", "file": "model.onnx", "options": ("opset", "optimize")},
    "saved-model": {"backend": "tf", "file": "saved_model", "options": ("tokenizer_dir",)},
    "stablehlo": {"backend": "flax", "file": "model.stablehlo", "options": ()},
}
# exporter option -> the command-line flag that sets it.
OPTION_FLAGS = {"opset": "--opset", "optimize": "--optimize", "tokenizer_dir": "--with-tokenizer"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Output fields an artifact does not return: the loss needs labels, the rest are opt-in diagnostics.
NOT_EXPORTED = ("loss", "hidden_states", "attentions", "past_key_values", "cross_attentions")
# Integer dtype of the id/mask inputs: int64 as in Hugging Face's ONNX and TF exports; int32 for StableHLO,
# because JAX runs with 64-bit types off by default.
INPUT_DTYPE = {"onnx": "int64", "saved-model": "int64", "stablehlo": "int32"}
SIDECAR = "export.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
DTYPES = ("float32", "float16", "bfloat16")
# (head, format, option) -> why that combination cannot be exported.
UNSUPPORTED: dict[tuple[str, str, str], str] = {
    ("BertForMultipleChoice", "saved-model", "tokenizer_dir"):
        "the in-graph tokenizer makes (batch, sequence) ids and multiple choice takes (batch, choices, sequence)",
}


def output_names(model_class: str) -> list[str]:
    """The output fields ``model_class`` exports, in Hugging Face's order."""
    from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
    return [f for f in OUTPUT_FIELDS[OUTPUT_OF[model_class]] if f not in NOT_EXPORTED]


def input_axes(model_class: str) -> list[str]:
    """Symbolic axis names of every input: (batch_size, sequence_length), or with num_choices between."""
    if model_class == "BertForMultipleChoice":
        return ["batch_size", "num_choices", "sequence_length"]
    return ["batch_size", "sequence_length"]


def artifact_spec(model_class: str, fmt: str) -> dict:
    """What an exporter is asked to write: {"format", "head", "inputs": {name: axes}, "input_dtype",
    "outputs": [names]}. The exporter returns the outputs it wrote (a model without a pooler has no
    ``pooler_output``)."""
    check_format(fmt)
    return {"format": fmt, "head": model_class, "inputs": {n: input_axes(model_class) for n in INPUT_NAMES},
            "input_dtype": INPUT_DTYPE[fmt], "outputs": output_names(model_class)}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--to {fmt!r} is not one of {list(FORMATS)}")


def check_options(fmt: str, options) -> None:
    """ValueError when an exporter option (``OPTION_FLAGS``) belongs to another format."""
    check_format(fmt)
    for k in options:
        if k not in FORMATS[fmt]["options"]:
            raise ValueError(f"{OPTION_FLAGS.get(k, k)} does not apply to --to {fmt}")


def check_exportable(model_class: str, fmt: str, config, options: dict | None = None) -> None:
    """ValueError naming the head and the format when this pair (with these options) cannot be exported."""
    from bert_common.weights import HEADS
    check_format(fmt)
    if model_class not in HEADS:
        raise ValueError(f"--head {model_class!r} is not one of {list(HEADS)}")
    if config.add_cross_attention:
        raise ValueError(f"{model_class} with add_cross_attention=True cannot be exported to {fmt}: its forward "
                         f"needs encoder_hidden_states, which the artifact signature "
                         f"({', '.join(INPUT_NAMES)}) does not carry")
    for option, value in (options or {}).items():
        if value and (model_class, fmt, option) in UNSUPPORTED:
            raise ValueError(f"{model_class} cannot be exported to {fmt} with {OPTION_FLAGS[option]}: "
                             f"{UNSUPPORTED[model_class, fmt, option]}")


def read_sidecar(path: str) -> dict:
    """The ``export.json`` of an artifact directory written by ``bertrio export``."""
    file = os.path.join(os.fspath(path), SIDECAR)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is not an artifact directory written by bertrio export (no {SIDECAR})")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def export_artifact(model, out_dir: str, fmt: str, *, dtype: str = "float32", **options) -> dict:
    """Write ``model`` (a model of the format's backend, in ``dtype``) as a ``fmt`` artifact into the
    existing directory ``out_dir``, with its sidecar; returns the sidecar dict. ``options``: the format's
    exporter options (``FORMATS``: ``opset``, ``optimize`` for onnx; ``tokenizer_dir`` for saved-model)."""
    from bert_common import __version__
    from bert_common.backend import backend_submodule
    check_options(fmt, options)
    spec = artifact_spec(model.model_class, fmt)
    check_exportable(model.model_class, fmt, model.config, options)
    exporter = backend_submodule(FORMATS[fmt]["backend"], "export")
    info = exporter.export(model, out_dir, spec, **options)
    sidecar = {**spec, **info, "backend": FORMATS[fmt]["backend"], "dtype": dtype, "bertrio": __version__}
    sidecar["inputs"] = {n: {"axes": axes, "dtype": spec["input_dtype"]} for n, axes in spec["inputs"].items()}
    del sidecar["input_dtype"]
    with open(os.path.join(out_dir, SIDECAR), "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    return sidecar


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory ('-' for the embedded MiniLM)")
    p.add_argument("out", help="output directory (written to a temp dir, renamed when verified)")
    p.add_argument("--to", required=True, choices=tuple(FORMATS), help="artifact format")
    p.add_argument("--head", default="BertModel", help="model class to export (default BertModel); head "
                   "weights the checkpoint lacks are initialised from seed 0, as bertrio parity does")
    p.add_argument("--backend", help="backend the model is traced from (each format has one: "
                   + ", ".join(f"{f}: {s['backend']}" for f, s in FORMATS.items()) + ")")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--optimize", action="store_true", help="onnx: apply ONNX Runtime's BERT fusions")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and compute dtype")
    p.add_argument("--with-tokenizer", action="store_true",
                   help="saved-model: add a serving_text signature with the in-graph tokenizer (strings in)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check of the written artifact")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


class _Rejected(Exception):
    """The artifact failed its parity check: abandon the temp directory."""


def verify(checkpoint: str, artifact_dir: str, fmt: str, head: str, dtype: str = "float32") -> int:
    """Run ``bertrio parity CHECKPOINT --backends SOURCE,FORMAT --heads HEAD --checks forward --artifact DIR``
    (forward check in fp32, the half check otherwise); returns its exit code."""
    from bert_common.cli import subcommands
    module_path = subcommands().get("parity")
    if module_path is None:
        raise ImportError("cannot verify the artifact: the parity suite (bertrio parity) is not installed; "
                          "install bertrio with its conformance package or pass --no-verify")
    parity = importlib.import_module(module_path)
    parser = argparse.ArgumentParser(prog="bertrio parity")
    parity.add_arguments(parser)
    args = parser.parse_args([checkpoint, "--backends", f"{FORMATS[fmt]['backend']},{fmt}", "--heads", head,
                              "--checks", "forward", "--dtype", dtype, "--artifact", artifact_dir])
    return int(parity.run(args))


def _copy_side_files(checkpoint: str, out_dir: str) -> list[str]:
    copied = []
    for name in ("config.json",) + TOKENIZER_FILES:
        src = os.path.join(checkpoint, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))
            copied.append(name)
    return copied


def run(args: argparse.Namespace) -> int:
    from bert_common.backend import _normalise, backend_module
    from bert_common.config import BertConfig
    from bert_common.io_utils import atomic_directory

    checkpoint = default_checkpoint() if args.checkpoint == "-" else args.checkpoint
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint directory not found: {checkpoint}")
    fmt = args.to
    source = FORMATS[fmt]["backend"]
    if args.backend is not None and _normalise(args.backend, "--backend") != source:
        raise ValueError(f"--backend {args.backend}: {fmt} is exported from the {source} backend only")
    given = {"opset": args.opset, "optimize": args.optimize or None,
             "tokenizer_dir": checkpoint if args.with_tokenizer else None}
    options = {k: v for k, v in given.items() if v is not None}
    check_options(fmt, options)
    if args.with_tokenizer and not os.path.isfile(os.path.join(checkpoint, "vocab.txt")):
        raise FileNotFoundError(f"--with-tokenizer needs {os.path.join(checkpoint, 'vocab.txt')}")
    config = BertConfig.from_pretrained(checkpoint)
    check_exportable(args.head, fmt, config, options)
    # Question answering splits its logits into start/end: num_labels must be 2 (as in HF and bertrio parity).
    overrides = {"num_labels": 2} if args.head == "BertForQuestionAnswering" else {}
    model_cls = getattr(backend_module(source), args.head)
    model = model_cls.from_pretrained(checkpoint, allow_new_head=True, dtype=args.dtype, **overrides)

    try:
        with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
            sidecar = export_artifact(model, tmp, fmt, dtype=args.dtype, **options)
            _copy_side_files(checkpoint, tmp)
            if not args.no_verify:
                print(f"bertrio export: verifying {fmt} against {source} ...", file=sys.stderr)
                if verify(checkpoint, tmp, fmt, args.head, args.dtype) != EXIT_OK:
                    raise _Rejected
    except _Rejected:
        print(f"bertrio export: FAIL: the {fmt} artifact of {args.head} disagrees with the {source} model "
              f"(table above); nothing was written to {args.out}", file=sys.stderr)
        return EXIT_MISMATCH
    target = os.path.join(args.out, sidecar["file"])
    print(f"exported {args.head} ({source}, {args.dtype}) to {target}"
          + ("" if args.no_verify else ", verified by bertrio parity"))
    print("inputs: " + ", ".join(f"{n} {v['dtype']} ({', '.join(v['axes'])})"
                                 for n, v in sidecar["inputs"].items()))
    print("outputs: " + ", ".join(sidecar["outputs"]))
    return EXIT_OK

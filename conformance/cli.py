"""``bertrio parity [CHECKPOINT]``: check that the backends compute the same numbers on a checkpoint.

Registered with the ``bertrio`` command through the ``bertrio.commands`` entry point, so the framework-free
core never imports the suite. Exit codes: 0 all checks pass, 1 a mismatch, 2 bad usage.
"""
from __future__ import annotations

import argparse

from conformance.runner import run_cli
from conformance.suite import CHECKS, DEFAULT_CHECKS, TRAIN_STEPS

HELP = "check that the backends compute the same numbers on a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: the embedded MiniLM)")
    p.add_argument("--backends", default=None,
                   help="comma list of torch,tf,flax, the Hugging Face oracle 'hf' and the exported artifacts "
                        "onnx,saved-model,stablehlo (default: every installed framework backend)")
    p.add_argument("--heads", default=None,
                   help="comma list of model classes, or 'all' for every head the checkpoint can build "
                        "(default: the heads the checkpoint fills)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or a comma list")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "all"),
                   help="where the backends run; 'all' adds CPU-vs-GPU pairs (GPU runs pin TF32 off)")
    p.add_argument("--require-gpu", action="store_true", help="fail if any framework cannot see a GPU")
    p.add_argument("--checks", default=None,
                   help=f"comma list of {','.join(CHECKS)} (default: {','.join(DEFAULT_CHECKS)})")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS,
                   help=f"updates each backend's trainer makes in the train check (default {TRAIN_STEPS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--batch", type=int, default=2, help="rows in the test batch (default 2)")
    p.add_argument("--seq", type=int, default=16, help="tokens per row in the test batch (default 16)")
    p.add_argument("--artifact", action="append", metavar="DIR",
                   help="an artifact directory written by bertrio export: the backend of its format (onnx, "
                        "saved-model, stablehlo; also in --backends) checks it instead of exporting each case")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--junit", help="write a JUnit XML report here")
    p.add_argument("--markdown", help="write a Markdown report here")


def run(args: argparse.Namespace) -> int:
    from conformance.adapters.artifact import clear_artifacts, use_artifact
    try:
        for path in args.artifact or []:
            fmt = use_artifact(path)
            if fmt not in (args.backends or "").split(","):
                raise ValueError(f"--artifact {path} holds a {fmt} artifact; name {fmt} in --backends")
        return run_cli(args)
    finally:
        clear_artifacts()

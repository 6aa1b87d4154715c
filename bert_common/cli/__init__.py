"""The ``bertrio`` command line: one module per subcommand.

Each subcommand is a module with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Built-in subcommands live in this package and are listed in ``BUILTIN``; a higher
package registers its own under the entry-point group ``bertrio.commands`` (``conformance`` registers
``parity`` that way), so this ground floor never imports it.

Exit codes (``bert_common.cli.base``): 0 success, 1 a check failed (parity mismatch), 2 bad usage or bad
input (nothing written).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Sequence

from bert_common.cli.base import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, USAGE_ERRORS, default_checkpoint

# subcommand name -> module; imported only when that subcommand runs or its parser is built.
BUILTIN = {
    "info": "bert_common.cli.info",
    "convert": "bert_common.cli.convert",
    "export": "bert_common.cli.export",
    "embed": "bert_common.cli.embed",
    "bench": "bert_common.cli.bench",
    "pretrain-data": "bert_common.cli.pretrain_data",
    "pretrain": "bert_common.cli.pretrain",
    "finetune": "bert_common.cli.finetune",
}
ENTRY_POINT_GROUP = "bertrio.commands"


def subcommands() -> dict[str, str]:
    """{name: module path} of every subcommand: the built-ins, then those registered by entry points."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def build_parser() -> argparse.ArgumentParser:
    from bert_common import __version__
    parser = argparse.ArgumentParser(prog="bertrio", description="One BERT in PyTorch, TensorFlow and Flax.")
    parser.add_argument("--version", action="version", version=f"bertrio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in subcommands().items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


# Framework start-up chatter (TF's cpu_feature_guard / oneDNN lines, absl) is not for a CLI user; set
# before any framework is imported, and only where the user has not chosen a level.
QUIET_FRAMEWORK_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in QUIET_FRAMEWORK_ENV.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage (0 for --help / --version); keep its code
        return int(e.code or 0)
    if args.command is None:  # a bare ``bertrio`` shows the help
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args))
    except USAGE_ERRORS as e:
        print(f"bertrio {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["main", "build_parser", "subcommands", "EXIT_OK", "EXIT_MISMATCH", "EXIT_USAGE", "default_checkpoint"]

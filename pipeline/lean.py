"""Importing MONAI for inference alone, without the extras it loads eagerly.

``import monai`` imports every ``monai.*`` module, and with them, when installed, PyTorch
Ignite (which pulls in ``torch.distributed``, FSDP and sympy), MLflow, matplotlib, pandas,
``scipy.signal`` and ``scipy.stats``: about 2.6 of the 3.8 s it takes on a 2-core CPU, none
of it used by a batch job.
MONAI imports them through its ``optional_import``, which treats a missing module as an
absent optional dependency. :func:`import_monai_for_inference` hides them while MONAI
itself is imported, so MONAI leaves them out; imported later (by lungseg or anything
else), they load normally, but MONAI's engines, handlers, profiling and visualisation are
unusable in that process. Its transforms, networks and bundle parser are unaffected. Only
``lungseg segment`` uses it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Sequence

#: Packages MONAI imports eagerly (as optional) that inference does not use.
NOT_FOR_INFERENCE = ("ignite", "mlflow", "matplotlib", "pandas", "scipy.signal", "scipy.stats")


class _Hidden(importlib.abc.MetaPathFinder):
    """A finder that reports ``names`` (and their submodules) as not installed."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        """Raise ModuleNotFoundError for a hidden package; leave every other to the next finder."""
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (hidden while MONAI is imported for inference)",
                name=fullname,
            )


def import_monai_for_inference(names: Sequence[str] = NOT_FOR_INFERENCE) -> bool:
    """Import MONAI with ``names`` hidden; return whether they were (False: too late).

    Nothing is hidden when MONAI, or one of ``names``, is already imported: MONAI's
    optional imports are then resolved, or about to be, the usual way.
    """
    if {"monai", *names} & set(sys.modules):
        return False
    finder = _Hidden(names)
    sys.meta_path.insert(0, finder)
    try:
        importlib.import_module("monai")
    finally:
        sys.meta_path.remove(finder)
    return True

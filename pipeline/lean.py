"""Importing MONAI for inference alone, without the extras it loads eagerly.

``import monai`` imports every ``monai.*`` module (its ``load_submodules``: 430 modules,
each executed twice), and with them, when installed, PyTorch Ignite (which pulls in
``torch.distributed``, FSDP and sympy), MLflow, matplotlib, pandas, ``scipy.signal``,
``scipy.stats``, requests and nibabel: about 2.8 of the 3.8 s it takes on a 2-core CPU, none
of it used by a batch job (lungseg imports its own requests and nibabel when it needs them).
:func:`import_monai_for_inference` imports MONAI's package without that walk, then only the
sub-packages inference uses (:data:`FOR_INFERENCE`: transforms, data, bundle
parser, networks; ~210 modules), with the extras hidden: MONAI imports them through its
``optional_import``, which treats a missing module as an absent optional dependency.
Imported later (by lungseg or anything else), every module loads normally, but MONAI's
engines, handlers, profiling, visualisation, NIfTI reader/writer and TCIA download are
unusable in that process. Bundle
configs name components by their dotted path or by a short name from the sub-packages
loaded here. Only ``lungseg segment`` uses it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import pkgutil
import sys
from collections.abc import Iterator, Sequence

#: Packages MONAI imports eagerly (as optional) that inference does not use.
NOT_FOR_INFERENCE = (
    "ignite",
    "mlflow",
    "matplotlib",
    "pandas",
    "scipy.signal",
    "scipy.stats",
    "requests",  # for monai.apps.tcia; lungseg imports its own when it reads DICOMweb
    "nibabel",  # for MONAI's NIfTI reader and writer; lungseg reads and writes NIfTI itself
)
#: MONAI's sub-packages a bundle's inference config uses, in an order free of import cycles
#: (``monai.apps`` first, as ``import monai`` does).
FOR_INFERENCE = ("monai.apps", "monai.transforms", "monai.data", "monai.bundle", "monai.networks")


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
    finder, walk = _Hidden(names), pkgutil.walk_packages
    sys.meta_path.insert(0, finder)
    pkgutil.walk_packages = _outside_monai(walk)  # MONAI's module walk finds nothing
    try:
        importlib.import_module("monai")
        for name in FOR_INFERENCE:
            importlib.import_module(name)
    finally:
        pkgutil.walk_packages = walk
        sys.meta_path.remove(finder)
        module = sys.modules.get("monai.utils.module")
        if getattr(module, "walk_packages", walk) is not walk:  # bound while patched
            module.walk_packages = walk
    return True


def _outside_monai(walk: object) -> object:
    """``pkgutil.walk_packages`` that walks nothing under MONAI's own package folder."""

    def walk_packages(path: object = None, prefix: str = "", onerror: object = None) -> Iterator:
        if prefix.startswith("monai."):
            return iter(())
        return walk(path, prefix, onerror)

    return walk_packages

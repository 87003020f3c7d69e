"""The batch job's start-up: lean MONAI, no garbage collection, OpenMP threads that sleep.

``import monai`` imports every ``monai.*`` module (its ``load_submodules``: 430 modules,
each executed twice), and with them, when installed, PyTorch Ignite (which pulls in
``torch.distributed``, FSDP and sympy), MLflow, matplotlib, pandas, ``scipy.signal``,
``scipy.stats``, requests, nibabel, ITK and jsonschema: about 2.9 of the 3.8 s it takes on a
2-core CPU, none of it used by a batch job (lungseg imports its own requests and nibabel when
it needs them, and reads ITK formats through SimpleITK).
:func:`import_monai_for_inference` imports MONAI's package without that walk, then only the
sub-packages inference uses (:data:`FOR_INFERENCE`: transforms, data, bundle
parser, networks; ~210 modules), with the extras hidden: MONAI imports them through its
``optional_import``, which treats a missing module as an absent optional dependency.
scikit-image's measure, morphology and exposure modules are deferred (:func:`defer`): imported
at their first use, not while MONAI loads (~0.4 s). Imported later (by lungseg or anything
else), every module loads normally, but MONAI's
engines, handlers, profiling, visualisation, NIfTI reader/writer and TCIA download are
unusable in that process. Bundle
configs name components by their dotted path or by a short name from the sub-packages
loaded here.

:func:`let_idle_threads_sleep` makes the network's OpenMP threads sleep as soon as they run
out of work, instead of spinning for ~300,000 iterations (libgomp's default) on cores the
worker processes are waiting for: on 2 cores, 512² radiographs went ~10 % faster (5 runs
of 1000 alternated, README *Throughput*).

:func:`pause_collector` keeps Python's garbage collector off while the start-up creates its
~670,000 objects, and :func:`resume_collector` turns it back on, those objects frozen, when
the workers are about to fork: 512², 100 files, the whole process 1.14x faster (5 alternated
runs). Only ``lungseg segment`` uses this module.
"""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import importlib.machinery
import os
import pkgutil
import sys
import types
from collections.abc import Iterator, MutableMapping, Sequence

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
    "itk",  # for MONAI's ITK reader and writer (~70 ms); lungseg reads through SimpleITK
    "jsonschema",  # for MONAI's bundle metadata check (~45 ms), not run by inference
)
#: Modules MONAI imports eagerly and a bundle's inference may use: loaded on first use
#: instead (:class:`_Deferred`). scikit-image's measure, morphology and exposure cost ~0.4 s
#: to import; MONAI's KeepLargestConnectedComponent (measure) still works.
DEFERRED = ("skimage.measure", "skimage.morphology", "skimage.exposure")
#: MONAI's sub-packages a bundle's inference config uses, in an order free of import cycles
#: (``monai.apps`` first, as ``import monai`` does).
FOR_INFERENCE = ("monai.apps", "monai.transforms", "monai.data", "monai.bundle", "monai.networks")
#: Whether :func:`pause_collector` stopped the garbage collector (and nothing resumed it).
_COLLECTOR: dict[str, bool] = {"paused": False}
#: OpenMP variables that decide how long a thread out of work spins before it sleeps; the
#: first is the standard one, the second libgomp's own (it wins when set).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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


class _Deferred(types.ModuleType):
    """A stand-in for a module, imported for real at the first attribute it lacks.

    It carries the real module's ``__spec__``, ``__file__`` and ``__path__`` (what MONAI's
    ``optional_import`` reads); any other attribute imports the module, puts it in
    ``sys.modules`` and on its parent package in the stand-in's place, copies its
    namespace into the stand-in (for those who kept a reference to it) and answers.
    """

    def __init__(self, spec: importlib.machinery.ModuleSpec):
        super().__init__(spec.name)
        self.__spec__, self.__file__ = spec, spec.origin
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, attr: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        parent, _, child = self.__name__.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, real)
        self.__dict__.update({k: v for k, v in vars(real).items() if k != "__class__"})
        return getattr(real, attr)


def defer(names: Sequence[str] = DEFERRED) -> list[str]:
    """Put a :class:`_Deferred` stand-in in ``sys.modules`` for each installed, unimported name.

    Returns:
        The names deferred.
    """
    import importlib.util

    out = []
    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            sys.modules[name] = _Deferred(spec)
            out.append(name)
    return out


def import_monai_for_inference(names: Sequence[str] = NOT_FOR_INFERENCE) -> bool:
    """Import MONAI with ``names`` hidden and :data:`DEFERRED` deferred.

    Returns:
        Whether they were (False: too late). Nothing is hidden when MONAI, or one of
        ``names``, is already imported: MONAI's optional imports are then resolved, or
        about to be, the usual way.
    """
    if {"monai", *names} & set(sys.modules):
        return False
    defer()
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


def let_idle_threads_sleep(env: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy or torch is loaded.

    OpenMP reads it once, when torch loads its runtime, so this must run before torch is
    imported. A passive thread sleeps when a parallel region ends instead of spinning, so
    the cores go to the worker processes (decoding, writing) between and inside forward
    passes; the forward pass itself gets a little slower, the batch faster.

    Args:
        env: the environment to set it in (default: this process's, which children inherit).

    Returns:
        Whether it was set (False: one of :data:`WAIT_VARIABLES` is set, or torch is
        imported already and would not read it).
    """
    env = os.environ if env is None else env
    if "torch" in sys.modules or any(name in env for name in WAIT_VARIABLES):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def pause_collector() -> bool:
    """Stop Python's cyclic garbage collector for the start-up (:func:`resume_collector`).

    Importing torch, MONAI and highdicom and parsing highdicom's tables of the standard
    (22 MB of JSON) create ~670,000 objects; with the collector on, each full collection
    walks all of them again: ~0.55 s of a ~2.3 s start-up on 2 cores (imports 1.67 → 1.47 s,
    highdicom 0.20 → 0.12 s, its tables 0.39 → 0.12 s). Start-up makes no garbage cycles
    worth collecting.

    Returns:
        Whether it was paused (False: it was already off, e.g. the user's choice).
    """
    if not gc.isenabled():
        return False
    gc.disable()
    _COLLECTOR["paused"] = True
    return True


def resume_collector(freeze: bool = True) -> bool:
    """Restart the collector :func:`pause_collector` stopped, once; a no-op otherwise.

    Args:
        freeze: first move every object there is into the permanent generation
            (``gc.freeze``), as CPython advises before forking: worker processes forked
            afterwards never walk, and so never copy, the pages of what they inherited, and
            no later collection walks the start-up's objects again.

    Returns:
        Whether it was restarted.
    """
    if not _COLLECTOR["paused"]:
        return False
    _COLLECTOR["paused"] = False
    if freeze:
        gc.freeze()
    gc.enable()
    return True

"""Inference: the one predictor, its bundle and identity, outputs, the batch job.

- :mod:`~pipeline.inference.bundle`: where bundles are, their parsed config, model identity;
- :mod:`~pipeline.inference.ensemble`: checkpoint ensembles and test-time flips (config options);
- :mod:`~pipeline.inference.predictor`: :class:`Predictor`, used by every front end;
- :mod:`~pipeline.inference.lungs`: right/left lungs, areas, QA flags;
- :mod:`~pipeline.inference.outputs`: report rows, mask, overlay, NIfTI, SEG, SR;
- :mod:`~pipeline.inference.segment`, :mod:`~pipeline.inference.workers`,
  :mod:`~pipeline.inference.report`: ``lungseg segment`` (pool, journal, report);
- :mod:`~pipeline.inference.preview`, :mod:`~pipeline.inference.datalist`: previews, datalists.

``Predictor`` and ``Prediction`` are importable from here (loaded on first use, so importing
the package stays light).
"""

from typing import Any

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'pipeline.inference' has no attribute {name!r}")

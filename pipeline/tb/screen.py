"""``lungseg segment --tb``: the batch job with a TB score on every segmented image."""

from __future__ import annotations

import os
from typing import Any


def segment_and_screen(
    *args: Any, tb_bundle: str | os.PathLike | None = None, device: str = "auto", **kwargs: Any
) -> dict[str, Any]:
    """:func:`pipeline.inference.segment.segment` with the TB bundle's model (research only).

    The lungs are segmented as the TB models were trained, in the visible lung field
    (:data:`pipeline.tb.SEG_OVERRIDES`), unless ``lung_field`` says otherwise.

    Args:
        *args: ``inputs`` and ``out_dir`` of :func:`~pipeline.inference.segment.segment`.
        tb_bundle: the TB bundle (default: the shipped one).
        device: ``auto``, ``cpu``, ``cuda``... (both models).
        **kwargs: the other options of :func:`~pipeline.inference.segment.segment`.
    """
    from pipeline.inference.segment import segment
    from pipeline.tb import SEG_OVERRIDES
    from pipeline.tb.model import TBModel

    kwargs["lung_field"] = kwargs.get("lung_field") or SEG_OVERRIDES["lung_field"]
    return segment(*args, device=device, tb_model=TBModel(tb_bundle, device), **kwargs)

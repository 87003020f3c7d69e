"""The MONAI Deploy operator: lungseg's predictor on each selected CR/DX instance → SEG.

Input ``study_selected_series_list`` is the SDK's ``DICOMSeriesSelectorOperator`` output;
every SOP instance of every selected series is read again from its file by lungseg's reader
(the SDK's own series-to-volume path loses MONOCHROME1, the VOI LUT and the orientation of
a single radiograph), predicted by :class:`~pipeline.inference.predictor.Predictor` and
written as lungseg's SEG (:func:`pipeline.inference.outputs.seg_of`), named by the source's
SOP Instance UID. An instance lungseg cannot use (a lateral view, a broken file) is logged
with the reason and skipped; the others go on. Output ``seg_paths`` (optional receiver):
the SEG files written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

LOG = logging.getLogger(__name__)


class LungSegOperator(Operator):
    """Segment the lungs of each selected radiograph and write its DICOM SEG.

    Args:
        fragment: the application.
        output_folder: where the SEG files go (created).
        bundle: the lungseg bundle (default: the shipped one).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:N``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: Path,
        bundle: str | None = None,
        device: str = "auto",
        **kwargs: Any,
    ):
        self.output_folder = Path(output_folder)
        self.bundle, self.device = bundle, device
        self.started = time.strftime("%Y%m%d%H%M%S")
        self._predictor: Any = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """One input (the selected series), one optional output (the SEG paths)."""
        spec.input("study_selected_series_list")
        spec.output("seg_paths").condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Segment what the selector chose; emit the SEG paths."""
        selected = op_input.receive("study_selected_series_list")
        op_output.emit(self.segment(selected), "seg_paths")

    @property
    def predictor(self) -> Any:
        """The lungseg predictor, loaded on first use."""
        if self._predictor is None:
            from pipeline.inference.predictor import Predictor

            self._predictor = Predictor(self.bundle, self.device)
        return self._predictor

    def segment(self, study_selected_series_list: list[Any]) -> list[Path]:
        """SEG files of every instance of every selected series (callable without a graph)."""
        written = []
        for selection in study_selected_series_list or []:
            for selected in selection.selected_series:
                for sop in selected.series.get_sop_instances():
                    path = self.segment_instance(sop.get_native_sop_instance())
                    if path is not None:
                        written.append(path)
        return written

    def segment_instance(self, ds: Any) -> Path | None:
        """One instance's SEG, or None (logged) when lungseg cannot use the instance."""
        from pipeline.inference.outputs import seg_of, write_seg
        from pipeline.io.errors import InputError

        source = getattr(ds, "filename", None)
        if not isinstance(source, (str, Path)):
            LOG.warning("instance %s has no file to read; skipped", ds.get("SOPInstanceUID"))
            return None
        try:
            pred = next(self.predictor.predict_from_files([source]))
        except InputError as err:
            LOG.warning("%s: skipped: %s", source, err.reason)
            return None
        seg = seg_of(ds, pred.measures, self.predictor.identity)
        target = self.output_folder / f"{ds.SOPInstanceUID}.dcm"
        return write_seg(seg, target, self.started)

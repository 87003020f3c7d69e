"""The MONAI Deploy application: DICOM loader → series selector (CR/DX) → lungseg SEG.

Run ``python -m pipeline.deploy -i DICOM_DIR -o OUT`` (or set the SDK's
``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH``); package as a MAP with
``monai-deploy package`` (see the README; needs Docker).
"""

from __future__ import annotations

import json
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from pipeline.deploy.operator import LungSegOperator

#: Every CR or DX series of a study (DX For Presentation and For Processing alike).
SELECTION_RULES = json.dumps(
    {"selections": [{"name": "chest radiographs", "conditions": {"Modality": "(?i)^(CR|DX)$"}}]}
)


class LungSegApp(Application):
    """Lung segmentation of chest radiographs as DICOM SEG (research use)."""

    name = "lungseg"
    description = "Right and left lung segmentation of CR/DX chest radiographs, DICOM SEG out"

    def compose(self) -> None:
        """Loader → selector → lungseg operator, on the SDK's input and output folders."""
        context = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), name="loader"
        )
        selector = DICOMSeriesSelectorOperator(
            self, rules=SELECTION_RULES, all_matched=True, name="selector"
        )
        lungseg = LungSegOperator(self, output_folder=Path(context.output_path), name="lungseg")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(
            selector, lungseg, {("study_selected_series_list", "study_selected_series_list")}
        )

"""A MONAI Deploy application around the lungseg predictor (``python -m pipeline.deploy``).

The SDK's DICOM loader and series selector pick the CR/DX series of each study; the
:class:`~pipeline.deploy.operator.LungSegOperator` runs the bundle's predictor on every
instance with lungseg's reader (MONOCHROME1, VOI, orientation) and writes lungseg's SEG,
the same object ``lungseg segment`` writes. Needs ``pip install -e ".[deploy]"``
(monai-deploy-app-sdk, which brings Holoscan); nothing here is imported by the rest of
lungseg.
"""

"""Tuberculosis score from the segmented lungs (research only).

Inputs, features, networks, cross-validated training and evaluation (``lungseg tb``).

The TB models read the lungs of the *visible* lung field (:data:`SEG_OVERRIDES`): the one
they were trained on, before the segmentation bundle's default became the anatomical field.
"""

#: What the TB code asks of the segmentation bundle: the lung field its models were trained on.
SEG_OVERRIDES = {"lung_field": "visible"}

"""Tuberculosis score from the segmented lungs (research only).

Inputs, features, networks, cross-validated training and evaluation (``lungseg tb``).
"""

"""lungseg: lung segmentation of chest X-rays with MONAI.

The package is split into stages (``pipeline.io``, ``pipeline.transforms``, ...). Importing
``pipeline`` itself stays cheap so the ``lungseg`` command answers ``--help`` quickly; heavy
libraries are imported by the stage modules that need them.
"""

__version__ = "0.1.0"

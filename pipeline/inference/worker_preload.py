"""What the fork server imports once for the batch job's workers (on CUDA).

Imported by :func:`pipeline.inference.workers.start_forkserver`'s server process, never by
lungseg itself: MONAI for inference only (:mod:`pipeline.lean`), the predictor and the
workers' steps, highdicom and its tables of the standard (``load_standard_tables``). The
workers it forks inherit all of it, as workers forked from the batch job's process do.
"""

from pipeline.lean import import_monai_for_inference

import_monai_for_inference()

from pipeline.inference import predictor, workers  # noqa: E402, F401  (inherited by the workers)
from pipeline.inference.outputs import load_standard_tables  # noqa: E402

load_standard_tables()

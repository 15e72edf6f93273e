"""The export engine: read a segment file, map and validate profiles, upsert them into SendGrid.

Nothing in this package imports `azure.functions`: the trigger functions, the CLI and the tests all
drive the same plain-Python engine.

Importing it sets OPENBLAS_NUM_THREADS to 1 unless the operator set it: numpy (sorts and look-ups of a
refresh) starts OpenBLAS with a thread per core at import, and those threads spin for ~0.1 s of CPU before they
sleep, beside the export, on every worker start. The app never multiplies a matrix, so it needs none of them.
It must come before numpy's first import, which is always through this package.
"""

import os as _os

_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

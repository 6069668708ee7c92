"""One training worker, as torchrun starts it: ``python -m hilt.training.run.worker``.

Every worker reads the same /opt/ml files (``SAGEMAKER_BASE_DIR`` is passed down) and
trains its share; the launching process finishes the model directory afterwards.
"""

from __future__ import annotations

import os
import sys

from hilt.core.errors import EXIT_USER_ERROR, UserError
from hilt.training.run.entry import run_worker
from hilt.training.base.job import read_job, write_failure
from hilt.core.opt_ml import OptML


def main() -> int:
    from hilt.training.base import stopping
    from hilt.training.run.entry import EXIT_STOPPED

    stopping.install()  # torchrun forwards SIGTERM: each worker stops in its own phase
    opt_ml = OptML.from_env()
    try:
        return run_worker(read_job(opt_ml))
    except stopping.JobStopped:
        return EXIT_STOPPED  # the launching process leaves the partial model
    except UserError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            write_failure(opt_ml, str(err))
        print(f"hilt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

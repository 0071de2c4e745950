"""Test setup: without a GPU the Triton kernels run in Triton's interpreter on the CPU
(TRITON_INTERPRET must be set before any kernel is defined)."""

import os
import sys

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.dirname(__file__))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "fastdyn", deadline=None, max_examples=25, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastdyn"))


# FASTDYN_FAILURE_LOG=path: each failure's traceback is appended to that file as it happens
# (a GPU run cut off at its time limit still tells what failed and why).
_FAILURE_LOG = os.environ.get("FASTDYN_FAILURE_LOG")

if _FAILURE_LOG:

    def pytest_runtest_logreport(report):
        # under xdist the controller sees each worker's report again (with .node): once is enough
        if report.failed and not (hasattr(report, "node") and report.when != "???"):
            with open(_FAILURE_LOG, "a") as f:
                f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext[-3000:]}\n")

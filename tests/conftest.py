import os
import shutil
import sys

# Tests import the examples (seed models) and the shared test helpers from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "1")

import pytest  # noqa: E402

from kcompiler.codegen.backend import registered_targets  # noqa: E402


def _runnable_targets():
    """{target: the option changes its tests run with} for each registered backend that can run
    here: 'cuda' on a GPU where one is usable (pycuda, the driver, a device), otherwise in the
    CPU emulation of the CUDA kernels where g++ exists."""
    targets = {}
    for name in registered_targets():
        if name == "cuda":
            from kcompiler.codegen.cuda.device import gpu_problem
            if gpu_problem() is None:
                targets[name] = {}
            elif shutil.which("g++"):
                targets[name] = {"cuda_emulation": True}
        else:
            targets[name] = {}
    return targets


TARGETS = _runnable_targets()


@pytest.fixture(params=sorted(TARGETS))
def target(request, monkeypatch):
    """Each backend that can run here in turn (with the options it needs: the CUDA emulation on
    machines without a GPU): the op and kernel tests that use op_check's helpers (tests/ops,
    tests/schedule: their conftest makes this fixture automatic) run on every one."""
    import op_check
    op_check.TARGET[0] = request.param
    if TARGETS[request.param]:
        op_check.use_options(monkeypatch, **TARGETS[request.param])
    yield request.param
    op_check.TARGET[0] = "cpu"


# ---- the CUDA tier's time ---------------------------------------------------------------------
# `make test` prints how long the CUDA tier took (tests/cuda, and every test run on target
# 'cuda' through the fixture): its budget is a few minutes of the suite's 15 (issue 8).

def _is_cuda_test(nodeid):
    return nodeid.startswith("tests/cuda/") or "[cuda" in nodeid or "-cuda]" in nodeid or "-cuda-" in nodeid


def pytest_terminal_summary(terminalreporter):
    seconds, count = 0.0, 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown") and _is_cuda_test(report.nodeid):
                seconds += report.duration
                count += report.when == "call"
    if count:
        terminalreporter.write_line(f"CUDA tier: {count} tests, {seconds:.0f} s of test time "
                                    f"(summed over workers, setup included)")

import os
import sys

# Tests import the examples (seed models) and the shared test helpers from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "1")

import pytest  # noqa: E402

from kcompiler.codegen.backend import registered_targets  # noqa: E402


@pytest.fixture(params=registered_targets())
def target(request):
    """Each registered backend in turn: the op and kernel tests that use op_check's helpers
    (tests/ops, tests/schedule: their conftest makes this fixture automatic) run on every one."""
    import op_check
    op_check.TARGET[0] = request.param
    yield request.param
    op_check.TARGET[0] = "cpu"

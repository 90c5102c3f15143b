"""Running a test script under AddressSanitizer and UBSan, for the CUDA emulation's checks.

A sanitized emulation library loads only into a process whose first library is ASan's
runtime (toolchain.sanitizer_environment: LD_PRELOAD), so the tests run such scripts in a
subprocess, with the repository root and tests/ on its path."""
import os
import subprocess
import sys
import textwrap

import pytest

from kcompiler.codegen.cuda import toolchain
from kcompiler.errors import UnsupportedError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_sanitized_script(script, *args, timeout=300):
    """``script`` (Python source) run with ``args`` in a sanitized subprocess; the completed
    process. Skips the test where g++ has no sanitizer runtime."""
    try:
        env = dict(os.environ, **toolchain.sanitizer_environment())
    except UnsupportedError as e:
        pytest.skip(str(e))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)

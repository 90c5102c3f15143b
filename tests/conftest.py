import os
import sys

# Tests import the examples (seed models) and the shared test helpers from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "1")

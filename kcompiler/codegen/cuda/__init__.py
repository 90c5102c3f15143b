"""CUDA C code generation (docs/codegen-cuda.md)."""
from . import gemm  # noqa: F401  (registers the matmul and fused_contraction templates)

"""CUDA C code generation (docs/codegen-cuda.md)."""

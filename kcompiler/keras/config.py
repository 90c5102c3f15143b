"""keras.config: process-wide settings (only what kcompiler has: unsafe deserialization)."""
from .serialization import enable_unsafe_deserialization  # noqa: F401

__all__ = ["enable_unsafe_deserialization"]

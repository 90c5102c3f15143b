"""keras.config: process-wide settings (only what kcompiler has: unsafe deserialization and the
image layers' default data format)."""
from .backend import image_data_format, set_image_data_format  # noqa: F401
from .serialization import enable_unsafe_deserialization  # noqa: F401

__all__ = ["enable_unsafe_deserialization", "image_data_format", "set_image_data_format"]

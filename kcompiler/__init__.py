"""kcompiler: a graph compiler for Keras models."""
__version__ = "0.1.0"

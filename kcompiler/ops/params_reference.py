"""numpy references of the parameter ops: the interpreter feeds these nodes itself."""

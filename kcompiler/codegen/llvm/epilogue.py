"""The `fused_contraction` kernel: the head (matmul or conv2d) writes its product into the
node's first output buffer; the epilogue then finishes those rows in place — reading the
product, evaluating the element-wise members, storing every output — while they are in
cache. A convolution calls the epilogue after each chunk of rows it computes (its input
gradient: after each part's images are complete)."""
from ...ir.registry import get_op, lowering
from .conv import lower_conv2d, lower_conv2d_backward_input
from .irutil import c64, const, for_range, load, store
from .scalar import ScalarEmitter


class HeadView:
    """The KernelBuilder as the head's lowering sees it: the head's operands, its attrs, and
    the fused node's first output as its result buffer."""

    def __init__(self, k, head_type):
        n = k.attrs["n_head"]
        self._k = k
        self.b, self.module, self.status, self.function = k.b, k.module, k.status, k.function
        self.node = {"op": k.attrs["head"], "attrs": k.attrs["head_attrs"], "type": head_type}
        self.attrs = k.attrs["head_attrs"]
        self.inputs, self.in_types = k.inputs[:n], list(k.in_types[:n])
        self.outputs, self.out_types = k.outputs[:1], [head_type]
        self.inline_constants = {}

    def __getattr__(self, name):  # call_gemm, gemm, fail, ...
        return getattr(self._k, name)


class Epilogue:
    def __init__(self, k, head_type):
        attrs = k.attrs
        self.body, self.out_index = attrs["body"], attrs["outputs"]
        n = attrs["n_head"]
        self.width = head_type.shape[-1]
        self.out_types = k.out_types
        self.extra_types = list(k.in_types[n:])
        self.constants = {i - n: v for i, v in k.inline_constants.items() if i >= n}
        self.pointers = list(k.outputs) + list(k.inputs[n:])  # what a part function must receive

    def emit(self, b, pointers, first_row, rows):
        """Finish rows [first_row, first_row + rows) of the product (i64 values or ints)."""
        outs, extras = pointers[:len(self.out_types)], pointers[len(self.out_types):]
        width = self.width
        first_row = c64(first_row) if isinstance(first_row, int) else first_row
        with for_range(b, rows, name="er") as r:
            row_base = b.mul(b.add(first_row, r), c64(width))
            with for_range(b, width, name="ec") as c:
                flat = b.add(row_base, c)
                e = ScalarEmitter(b, flat_index=flat)
                acc = load(b, outs[0], flat, "float32")

                def operand(i):
                    if i in self.constants:
                        return const(self.constants[i], self.extra_types[i].dtype)
                    t = self.extra_types[i]
                    if tuple(t.shape) == ():
                        index = c64(0)
                    elif len(t.shape) == 1 and t.shape[0] == width and len(self.out_types[0].shape) > 1:
                        index = c
                    else:
                        index = flat
                    return load(b, extras[i], index, t.dtype)

                values = []
                for m in self.body:
                    if m["op"] == "constant":
                        values.append(const(m["attrs"]["value"], m["attrs"]["dtype"]))
                        continue
                    args = [acc if kind == "acc" else operand(i) if kind == "in" else values[i]
                            for kind, i in m["args"]]
                    values.append(get_op(m["op"]).lowerings["llvm"](e, args, m["attrs"]))
                for ptr, t, j in zip(outs, self.out_types, self.out_index):
                    store(b, values[j], ptr, flat, t.dtype)


# Heads whose lowering applies the epilogue itself, chunk by chunk, while the rows are in cache.
CHUNKED_HEADS = {"conv2d": lower_conv2d, "conv2d_backward_input": lower_conv2d_backward_input}


@lowering("llvm", "fused_contraction")
def lower_fused_contraction(k):
    from ...ops.fused_contraction import head_type as infer_head_type
    head_type = infer_head_type(list(k.in_types), k.attrs)
    head = HeadView(k, head_type)
    epilogue = Epilogue(k, head_type)
    rows = 1
    for d in head_type.shape[:-1]:
        rows *= d
    if k.attrs["head"] in CHUNKED_HEADS:
        CHUNKED_HEADS[k.attrs["head"]](head, epilogue=epilogue)
    else:
        get_op(k.attrs["head"]).lowerings["llvm"](head)
        epilogue.emit(k.b, epilogue.pointers, 0, rows)

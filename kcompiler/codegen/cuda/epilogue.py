"""The fused epilogue of a CUDA contraction template (a ``fused_contraction`` node): the
element-wise members after the head, as one ``__device__`` function a template calls for
every element of the product it stores, while the value is still in a register.

``Epilogue(ctx)`` (ctx: render.TemplateContext of the fused node) gives ``source`` (the
function) and ``call(acc, column, flat)`` (the C statement that finishes the element at
flat index ``flat``, column ``column`` of the product's last axis, whose product is
``acc``). The members are the fused body's neutral expressions (schedule.elementwise
.member_values), so the CUDA epilogue computes exactly what the CPU's does; other operands
are read at the element, along the last axis (a bias), or as the one scalar, as on the CPU
(codegen/llvm/epilogue.py).
"""
from ...ops.fused import member_types
from ...ops.fused_contraction import head_type as infer_head_type
from ...schedule.elementwise import member_values
from ...schedule.kernel import Const, Load, Local, Store, Var
from .render import C_TYPE, device_function

ACC, COLUMN, FLAT = Var("acc", "float32"), Var("column"), Var("flat")


class Epilogue:
    def __init__(self, ctx):
        attrs = ctx.attrs
        n = attrs["n_head"]
        self.head_type = infer_head_type(ctx.in_types, attrs)
        self.head_ctx_types = ctx.in_types[:n]
        width = self.head_type.shape[-1]
        extra_types = ctx.in_types[n:]

        def operand(k):
            i = n + k
            t = ctx.in_types[i]
            if i in ctx.constants:
                return Const(ctx.constants[i], t.dtype)
            if tuple(t.shape) == ():
                index = Const(0, "int64")
            elif len(t.shape) == 1 and t.shape[0] == width and len(ctx.out_types[0].shape) > 1:
                index = COLUMN
            else:
                index = FLAT
            return Load(f"in{i}", index, t.dtype)

        statements = []

        def bind(j, e):
            var = Var(f"m{j}", e.dtype)
            statements.append(Local(var, e))
            return var
        members = member_values(attrs["body"], member_types(extra_types, attrs, acc=self.head_type), operand,
                                acc=ACC, index=FLAT, bind=bind)
        for k, j in enumerate(attrs["outputs"]):
            statements.append(Store(f"out{k}", FLAT, members[j]))
        self.function = f"{ctx.name}_epilogue"
        buffer_params = [f"{C_TYPE[b.dtype]}* __restrict__ {b.name}" if b.output
                         else f"const {C_TYPE[b.dtype]}* __restrict__ {b.name}" for b in ctx.buffers]
        params = ", ".join(["float acc", "long long column", "long long flat", *buffer_params])
        self.source = device_function(self.function, params, statements)
        self.buffer_names = [b.name for b in ctx.buffers]

    def call(self, acc, column, flat):
        return f"{self.function}({acc}, {column}, {flat}, {', '.join(self.buffer_names)});"

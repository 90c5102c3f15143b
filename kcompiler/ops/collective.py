"""The collective of data-parallel training (kcompiler/distribute/).

``all_reduce(g_0, ..., g_k-1)`` stands for the sum of each operand over every process's
copy of the step: its outputs are its operands after the all-reduce, in place. It has no
kernel: the memory planner places the operands side by side in one region of the arena
(passes/memory_plan.py), the backend splits the step there into two native calls, and the
runtime reduces the region between them with one MPI call (runtime code in
kcompiler/distribute/step.py). ``attrs["extra_slots"]``: float32 slots the region keeps
after the operands for the runtime's own sums (each rank's step status, sample counts,
loss and metric sums), reduced in the same call."""
from ..errors import ShapeError
from ..ir.registry import register


def _all_reduce_rule(in_types, attrs):
    for t in in_types:
        if t.dtype != "float32":
            raise ShapeError(f"all_reduce: operands must be float32, got {t.dtype}")
    return tuple(in_types)


register("all_reduce", shape=_all_reduce_rule, kind="opaque",
         doc="sum of each operand over the processes of a data-parallel step, in place (no kernel)")

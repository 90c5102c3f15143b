"""From a static forward/training graph to runnable generated code:
fusion -> memory planning -> LLVM code generation -> compile (disk-cached) -> bind."""
from collections import OrderedDict

from .fusion import fuse_elementwise, fuse_epilogues
from .memory_plan import plan_memory
from .schedule import schedule_kernels
from .simplify import simplify


def lower_graph(g, *, fuse=True, stages=None):
    """Run the back half of the pipeline on static graph ``g``; returns (CompiledGraph, stages)."""
    from ..codegen.llvm.module import generate
    from ..codegen.llvm.target import compile_ir
    from ..runtime.compiled import CompiledGraph
    stages = stages if stages is not None else OrderedDict()
    g = simplify(g)
    if fuse:
        g = fuse_epilogues(fuse_elementwise(g))
    stages["fused"] = g
    g = plan_memory(g)
    stages["planned"] = g
    g = schedule_kernels(g)
    stages["scheduled"] = g
    import os
    profile = os.environ.get("KCOMPILER_PROFILE") == "1"
    text, kernels = generate(g, module_name=g.graph.get("name", "kcompiler"), profile=profile)
    module = compile_ir(text, name=g.graph.get("name", "kcompiler"))
    return CompiledGraph(g, module, kernels), stages

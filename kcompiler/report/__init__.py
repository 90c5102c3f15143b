"""``kcompiler.report``: one self-contained HTML page that shows what the compiler did to a model.

    kcompiler.report(model, x, y, path="report.html")        # or: kcompiler report MODEL -o report.html

The page holds the model summary; the IR at every stage drawn as SVG (forward and backward
coloured apart, each fused group boxed with its member ops), where clicking a node shows its
attributes, layer, fusion notes, kernel description and generated source (LLVM IR or CUDA C,
highlighted); the sortable kernel table (profiled time per step, bytes moved, FLOPs, fraction
of the machine's FMA peak); fused against unfused (kernel count, bytes, step time, a bar
chart); the memory plan (arena size, buffer lifetimes). Everything is inlined: viewing it needs
no network and no file beside it. collect.py gathers the data, draw.py the graphs, page.py
writes the HTML (template.html holds its CSS and script).

This module imports nothing at import time: ``import kcompiler`` binds its ``report``.
"""


def report(model, x=None, y=None, *, path=None, batch_size=None, training=None, target="cpu", steps=5,
           compare=True, peak_gflops=None, options=None):
    """Write the report of ``model`` to ``path`` (returns the path) or, without one, return the
    HTML. ``x``/``y``: a batch to profile with (default: synthetic data of ``batch_size``, 32);
    ``training`` (default: labels given or the model compiled with a loss) reports the whole
    training step; ``target`` 'cpu' or 'cuda' (the CUDA C runs emulated on the CPU where no GPU
    is usable); ``steps`` profiled and benchmarked steps; ``compare`` also measures the unfused
    step; ``peak_gflops`` skips measuring the machine's FMA peak."""
    from .collect import collect
    from .page import render
    data = collect(model, x, y, batch_size=batch_size, training=training, target=target, steps=steps,
                   compare=compare, peak_gflops=peak_gflops, options=options)
    html = render(data)
    if path is None:
        return html
    from ..keras.atomic_file import write_file_atomically
    write_file_atomically(path, html.encode("utf-8"))  # a crash mid-write keeps the previous report
    return path

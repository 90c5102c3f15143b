"""Dependencies run one way (STYLE.md, DESIGN §3): passes use ir/, ops/ and the kernel
description only; only the LLVM backend imports llvmlite and only the CUDA device module
pycuda; the kernel description and the op registry know no backend. Checked on the source's
import statements (including imports inside functions), so a lazy import cannot hide a wrong
direction."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "runtime":
        parts = ["kcompiler", "runtime"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path):
    """The absolute names of every module ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.append(target)
            out += [f"{target}.{a.name}" for a in node.names]  # `from .. import codegen`
    return out


SOURCES = sorted(list((ROOT / "kcompiler").rglob("*.py")) + list((ROOT / "runtime").rglob("*.py")))


def _violations(selected, forbidden):
    bad = []
    for path in SOURCES:
        name = _module_name(path)
        if not selected(name):
            continue
        for target in _imports(path):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    return sorted(set(bad))


# Tracing runs the front end's layers on symbolic tensors, so the two tracing modules still
# import kcompiler.keras (they belong with the front end; moving them is open work, see
# docs/status.md). Every other pass must not.
TRACING = ("kcompiler.passes.trace", "kcompiler.passes.training")


def test_passes_import_no_backend_and_no_runtime():
    assert _violations(lambda n: n.startswith("kcompiler.passes"),
                       ["kcompiler.codegen", "kcompiler.runtime", "llvmlite"]) == []


def test_passes_other_than_tracing_import_no_front_end():
    assert _violations(lambda n: n.startswith("kcompiler.passes") and n not in TRACING, ["kcompiler.keras"]) == []


@pytest.mark.parametrize("package, forbidden", [
    ("kcompiler.schedule", ["kcompiler.codegen", "kcompiler.runtime", "kcompiler.passes", "kcompiler.keras",
                            "llvmlite"]),
    ("kcompiler.ir", ["kcompiler.codegen", "kcompiler.runtime", "kcompiler.passes", "llvmlite"]),
    ("kcompiler.ops", ["kcompiler.codegen", "kcompiler.runtime", "kcompiler.passes", "llvmlite"]),
])
def test_package_does_not_import(package, forbidden):
    assert _violations(lambda n: n == package or n.startswith(package + "."), forbidden) == []


def test_runtime_imports_no_front_end_and_the_pipeline_no_runtime():
    """keras -> program -> pipeline -> passes and backends; runtime (executor, data conversion,
    specialisation cache, progress bar) serves them and imports none of the front end."""
    assert _violations(lambda n: n.startswith("kcompiler.runtime"), ["kcompiler.keras", "kcompiler.program"]) == []
    assert _violations(lambda n: n in ("kcompiler.pipeline", "kcompiler.program") or n.startswith("kcompiler.codegen"),
                       ["kcompiler.keras"]) == []
    assert _violations(lambda n: n == "kcompiler.pipeline" or n.startswith("kcompiler.codegen"),
                       ["kcompiler.runtime", "kcompiler.program"]) == []


def test_only_the_llvm_backend_imports_llvmlite():
    assert _violations(lambda n: not n.startswith("kcompiler.codegen.llvm"), ["llvmlite"]) == []


def test_only_the_cuda_device_module_imports_pycuda():
    """pycuda is the optional `cuda` extra: imported only where a real GPU is asked for."""
    assert _violations(lambda n: n != "kcompiler.codegen.cuda.device", ["pycuda"]) == []
    assert "pycuda.driver" in _imports(ROOT / "kcompiler" / "codegen" / "cuda" / "device.py")


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    assert "kcompiler.codegen.backend.get_backend" in _imports(ROOT / "kcompiler" / "pipeline.py")
    assert "kcompiler.options" in _imports(ROOT / "kcompiler" / "codegen" / "llvm" / "irutil.py")

"""The kcompiler command line:

    kcompiler ir MODEL [--format text|json|dot] [--stage NAME] [--batch-size N]
    kcompiler bench MODEL [--unfused] [--fused] [--batch-size N] [--steps N]
    kcompiler report MODEL [--batch-size N] [--training] [--target cpu|cuda] [--steps N] [--no-compare] -o FILE

MODEL is a `.keras`/`.h5` model file or `module:function` returning a model."""
import argparse
import importlib
import sys

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def load_model(spec, compile=False):
    """The model ``spec`` names; ``compile``: a model file's training configuration is restored too."""
    if spec.endswith(MODEL_FILE_SUFFIXES):
        return _load_model_file(spec, compile)
    if ":" not in spec:
        raise SystemExit(f"kcompiler: MODEL must be a .keras/.h5 file or module:function, got {spec!r}")
    module_name, func_name = spec.split(":", 1)
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"kcompiler: cannot import {module_name!r}: {e}")
    fn = getattr(module, func_name, None)
    if fn is None:
        raise SystemExit(f"kcompiler: {module_name!r} has no {func_name!r}")
    return fn()


def _load_model_file(path, compile=False):
    from kcompiler.errors import KCompilerError
    from kcompiler.keras.model_files import load_model as load
    try:
        return load(path, compile=compile)   # the IR and the benchmark need the architecture and weights
    except (OSError, KCompilerError, ValueError) as e:
        raise SystemExit(f"kcompiler: cannot load {path}: {e}")


def main(argv=None):
    import kcompiler
    parser = argparse.ArgumentParser(prog="kcompiler", description="Compile Keras models to generated kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    ir = sub.add_parser("ir", help="print a model's IR")
    ir.add_argument("model", help="a .keras/.h5 file or module:function returning a model")
    ir.add_argument("--format", default="text", choices=("text", "json", "dot"))
    ir.add_argument("--stage", default=None, help="traced, shaped, ... (default: the last)")
    ir.add_argument("--batch-size", type=int, default=None)
    bench = sub.add_parser("bench", help="time fused against unfused kernels")
    bench.add_argument("model", help="a .keras/.h5 file or module:function returning a model")
    bench.add_argument("--unfused", action="store_true")
    bench.add_argument("--fused", action="store_true")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--steps", type=int, default=20)
    tune = sub.add_parser("tune", help="measure this CPU's SGEMM cache blocking and save it for later runs")
    tune.add_argument("--budget", type=float, default=20.0, help="seconds the search may take (20)")
    report = sub.add_parser("report", help="write one self-contained HTML page showing what the compiler did")
    report.add_argument("model", help="a .keras/.h5 file or module:function returning a model")
    report.add_argument("-o", "--output", required=True, help="the HTML file to write")
    report.add_argument("--batch-size", type=int, default=32)
    report.add_argument("--training", action="store_true",
                        help="the whole training step (the model must carry an optimizer and a loss)")
    report.add_argument("--target", default="cpu", choices=kcompiler.TARGETS)
    report.add_argument("--steps", type=int, default=5, help="steps profiled and benchmarked")
    report.add_argument("--no-compare", action="store_true", help="do not measure the unfused step")
    args = parser.parse_args(argv)
    if args.command == "tune":
        from kcompiler.codegen.llvm import tuning
        blocking, results = tuning.search(args.budget)
        default = results.get((tuning.DEFAULT_KC, tuning.DEFAULT_MC, tuning.DEFAULT_NC), 0.0)
        best = results.get((blocking.kc, blocking.mc, blocking.nc), 0.0)
        print(f"{blocking.describe()}\n{best:.1f} GFLOP/s on one core (defaults: {default:.1f}); saved in "
              f"{tuning.saved_path()}")
    elif args.command == "ir":
        model = load_model(args.model)
        sys.stdout.write(kcompiler.dump_ir(model, fmt=args.format, stage=args.stage, batch_size=args.batch_size))
    elif args.command == "bench":
        import numpy as np
        from kcompiler.bench import format_results
        model = load_model(args.model)
        modes = [m for m, on in (("unfused", args.unfused), ("fused", args.fused)) if on] or ["unfused", "fused"]
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((args.batch_size,) + t.shape[1:]).astype(t.dtype) if t.dtype.startswith("float")
              else rng.integers(0, 2, (args.batch_size,) + t.shape[1:]).astype(t.dtype)
              for _, t in model.input_types()]
        results = kcompiler.benchmark(model, xs if len(xs) > 1 else xs[0], modes=modes, steps=args.steps)
        print(format_results(results))
    elif args.command == "report":
        import os
        model = load_model(args.model, compile=args.training)
        if args.training and getattr(model, "compiled_loss", None) is None:
            raise SystemExit(f"kcompiler: --training needs a model compiled with an optimizer and a loss; "
                             f"{args.model} gives model '{model.name}' without one")
        path = kcompiler.report(model, path=args.output, batch_size=args.batch_size, training=args.training,
                                target=args.target, steps=args.steps, compare=not args.no_compare)
        print(f"report written to {path} ({os.path.getsize(path) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

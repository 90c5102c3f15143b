"""Compilation options: one object, read from the environment once, passed down the pipeline.

Nothing below the front end reads the environment: ``kcompiler.compile`` and
``model.compile`` take ``options`` (or keyword overrides of the defaults), and every pass
and backend gets the object. The environment variables are the defaults' source:

    KCOMPILER_OPT_LEVEL            LLVM optimisation level 0-3 (3)
    KCOMPILER_PROFILE=1            count each kernel's cycles (CompiledGraph.profile)
    KCOMPILER_BOUNDS_CHECK=1       generated code checks every buffer access
    KCOMPILER_PIN_THREADS=0        do not pin the kernels' worker threads to CPUs
    KCOMPILER_WINOGRAD             3x3 convolutions by Winograd's F(2x2, 3x3) or F(4x4, 3x3):
                                   auto (where it pays, the default), off, or 2x2 / 4x4 (that
                                   algorithm wherever the geometry allows)
    KCOMPILER_MAX_SPECIALIZATIONS  compiled batch sizes kept per program (8)
    KCOMPILER_CUDA_EMULATION=1     target='cuda' runs its kernels on the CPU (the emulation of
                                   kcompiler/codegen/cuda/; for tests: never a silent fallback)

(The kernel cache's own settings — KCOMPILER_CACHE_DIR, KCOMPILER_NO_CACHE,
KCOMPILER_CACHE_MAX_BYTES — are read by the cache, once; docs/kernel-cache.md.)
"""
import dataclasses
import os
import threading


WINOGRAD_MODES = ("auto", "off", "2x2", "4x4")


@dataclasses.dataclass(frozen=True)
class Options:
    opt_level: int = 3
    profile: bool = False
    bounds_check: bool = False
    pin_threads: bool = True
    max_specializations: int = 8
    cuda_emulation: bool = False
    winograd: str = "auto"

    def __post_init__(self):
        if self.winograd not in WINOGRAD_MODES:
            raise ValueError(f"winograd must be one of {', '.join(WINOGRAD_MODES)}, got {self.winograd!r}")
        if not (isinstance(self.opt_level, int) and 0 <= self.opt_level <= 3):
            raise ValueError(f"opt_level must be 0..3, got {self.opt_level!r}")
        if not (isinstance(self.max_specializations, int) and self.max_specializations >= 1):
            raise ValueError(f"max_specializations must be a positive integer, got {self.max_specializations!r}")

    def replace(self, **changes):
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown compile options: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_environment(cls, env=None):
        env = os.environ if env is None else env
        return cls(opt_level=_int(env, "KCOMPILER_OPT_LEVEL", 3, 0, 3),
                   profile=env.get("KCOMPILER_PROFILE") == "1",
                   bounds_check=env.get("KCOMPILER_BOUNDS_CHECK") == "1",
                   pin_threads=env.get("KCOMPILER_PIN_THREADS", "1").lower() not in ("0", "false", "no", "off"),
                   max_specializations=_int(env, "KCOMPILER_MAX_SPECIALIZATIONS", 8, 1, None),
                   cuda_emulation=env.get("KCOMPILER_CUDA_EMULATION") == "1",
                   winograd=env.get("KCOMPILER_WINOGRAD", "auto").strip().lower() or "auto")


def _int(env, name, default, lo, hi):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        raise ValueError(f"{name} must be {bounds}, got {raw!r}")
    return value


_defaults = []
_lock = threading.Lock()


def default_options():
    """The options a compilation uses unless given others: the environment, read on first use."""
    if not _defaults:
        with _lock:
            if not _defaults:
                _defaults.append(Options.from_environment())
    return _defaults[0]


def set_default_options(options=None):
    """Replace the defaults (``None``: read the environment again on next use); returns the
    previous defaults. For tests and embedding applications."""
    with _lock:
        previous = _defaults[0] if _defaults else None
        _defaults.clear()
        if options is not None:
            _defaults.append(options)
    return previous


def resolve(options=None, **overrides):
    """``options`` (or the defaults) with keyword ``overrides`` applied."""
    base = default_options() if options is None else options
    return base.replace(**overrides) if overrides else base

"""All LLVM plumbing of the CPU back end in one module (llvmlite >= 0.50).

What lives here:

* lazy, once-only native target initialisation (``llvm.initialize()`` raises in
  llvmlite 0.50; only ``initialize_native_target`` / ``initialize_native_asmprinter``
  are called);
* :func:`host_target_info` -- ``(triple, cpu name, feature string)`` of the host;
* :func:`compile_ir` -- parse, verify, optimise (new pass manager), emit object
  code and load it into a fresh MCJIT engine, with an on-disk object cache;
* :func:`compile_units` -- the same for several units (a model's kernels and its
  entry point), each compiled and cached on its own, all loaded into one engine;
* :func:`vector_width_attrs` -- mark an ``llvmlite.ir.Function`` so that LLVM's
  auto-vectorisers use 512-bit vectors.

Environment variables
---------------------
``KCOMPILER_OPT_LEVEL``
    Default optimisation level of :func:`compile_ir` (0-3, default 3). The test
    suite sets it to 0 or 1 to keep compile times low (see docs/codegen-llvm.md).
``KCOMPILER_COMPILE_JOBS``
    How many processes :func:`compile_units` compiles on (default: the CPUs this
    process may run on, at most 2; 1 compiles in this process only).
``KCOMPILER_CACHE_DIR``, ``KCOMPILER_CACHE_MAX_BYTES``, ``KCOMPILER_NO_CACHE``
    The object cache: see :mod:`kcompiler.codegen.llvm.cache`.

Object code is cached on disk (:mod:`.cache`, which also states the trust model:
only entries this user wrote into a directory only this user can write are
loaded). A module loaded from the cache carries a crash marker until its first
successful call, which :meth:`CompiledModule.confirm` records.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import llvmlite
import llvmlite.binding as llvm

from ...errors import KCompilerError
from . import cache
# The cache's counters and paths, also reachable from here as before the cache had its own module.
from .cache import cache_dir, cache_enabled, cache_path, cache_stats, reset_cache_stats

__all__ = [
    "CompiledModule",
    "cache_dir",
    "cache_enabled",
    "cache_key",
    "cache_path",
    "cache_stats",
    "compile_ir",
    "compile_units",
    "default_opt_level",
    "emit_assembly",
    "host_target_info",
    "initialize",
    "live_module_count",
    "optimized_ir",
    "reset_cache_stats",
    "vector_width_attrs",
]

_LOCK = threading.RLock()
_INITIALIZED = False
_HOST_INFO: tuple[str, str, str] | None = None

# The loaded modules, weakly: an engine is freed when its CompiledModule is
# collected (the ctypes functions from CompiledModule.function() reference it,
# so it outlives every caller that can still run its code).
_LIVE_MODULES: "weakref.WeakSet[CompiledModule]" = weakref.WeakSet()



# --------------------------------------------------------------------------- init
def initialize() -> None:
    """Initialise LLVM's native target and asm printer once (thread-safe)."""
    global _INITIALIZED
    if _INITIALIZED:
        return
    with _LOCK:
        if _INITIALIZED:
            return
        # llvm.initialize() raises in llvmlite 0.50: the core is initialised
        # on import; only the native target and asm printer are needed.
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _ensure_pthread_symbols()
        _INITIALIZED = True


def _ensure_pthread_symbols() -> None:
    """Make sure MCJIT can resolve pthread_create/pthread_join.

    In a normal CPython process on glibc >= 2.34 they are already in the process
    (libc); on older systems libpthread may have to be loaded explicitly.
    """
    if llvm.address_of_symbol("pthread_create"):
        return
    name = ctypes.util.find_library("pthread")
    if name:
        try:
            llvm.load_library_permanently(name)
        except RuntimeError:  # pragma: no cover - depends on the platform
            pass


def host_target_info() -> tuple[str, str, str]:
    """Return ``(triple, cpu_name, features)`` of the host.

    ``features`` is the host feature string; on AVX-512 hosts ``-prefer-256-bit``
    is appended so that auto-vectorised loops use 512-bit vectors (see
    :func:`vector_width_attrs`), and on AVX2 hosts ``+prefer-no-gather,+prefer-no-scatter``:
    LLVM's vectoriser otherwise vectorised the outer loop of a per-channel operation across
    rows, each vector gathered and scattered with a stride of one row (a bias_add over
    64x30x30x32 floats on a Zen 4 host: 1.96 ms, 0.13 ms without gathers and scatters, as
    fast as a relu).
    """
    global _HOST_INFO
    if _HOST_INFO is None:
        initialize()
        triple = llvm.get_process_triple()
        cpu = llvm.get_host_cpu_name()
        try:
            features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:  # pragma: no cover - LLVM cannot tell on some hosts
            features = ""
        if "+avx512f" in features.split(","):
            features += ",-prefer-256-bit"
        if "+avx2" in features.split(","):
            features += ",+prefer-no-gather,+prefer-no-scatter"
        _HOST_INFO = (triple, cpu, features)
    return _HOST_INFO


def use_target_info(triple: str, cpu: str, features: str) -> None:
    """Emit code for this target instead of asking LLVM about the host (compile_worker.py:
    a helper process compiles for exactly the target its parent's cache keys name)."""
    global _HOST_INFO
    _HOST_INFO = (triple, cpu, features)


def host_has_avx512() -> bool:
    return "+avx512f" in host_target_info()[2].split(",")


def default_opt_level() -> int:
    """The optimisation level used when ``compile_ir`` gets ``opt_level=None``: the default
    options' (``$KCOMPILER_OPT_LEVEL``, else 3; kcompiler/options.py)."""
    from ...options import default_options
    return default_options().opt_level


def vector_width_attrs(fn, width: int = 512):
    """Add ``"prefer-vector-width"="<width>"`` to an ``llvmlite.ir.Function``.

    llvmlite's ``FunctionAttributes`` only accepts a fixed list of enum
    attributes, so the string attribute is inserted into the underlying set
    directly; llvmlite prints set members verbatim after the parameter list.
    Measured with llvmlite 0.50 / LLVM 22: the attribute makes the loop
    vectoriser use zmm registers even for CPUs tuned for 256 bits
    (``skylake-avx512``); the host here (``znver5``) already prefers 512 bits,
    and ``compile_ir`` additionally drops ``prefer-256-bit`` from the features.
    Returns ``fn``.
    """
    set.add(fn.attributes, f'"prefer-vector-width"="{int(width)}"')
    return fn


# ------------------------------------------------------------------- the cache
def cache_key(llvm_ir: str, opt_level: int) -> str:
    """sha256 over the IR text, the target (triple, CPU, features), the
    llvmlite/LLVM version, the optimisation level and the cache format."""
    triple, cpu, features = host_target_info()
    h = hashlib.sha256()
    for part in (
        cache.FORMAT_VERSION,
        triple,
        cpu,
        features,
        llvmlite.__version__,
        ".".join(map(str, llvm.llvm_version_info)),
        str(int(opt_level)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    h.update(llvm_ir.encode())
    return h.hexdigest()


# ------------------------------------------------------------ compile and load
def _target_machine(opt_level: int) -> llvm.TargetMachine:
    """A fresh target machine for the host (one per engine: an engine owns its
    target machine, and reusing an owned one crashed in llvmlite 0.50)."""
    triple, cpu, features = host_target_info()
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(
        cpu=cpu,
        features=features,
        opt=min(max(int(opt_level), 0), 3),
        reloc="default",
        codemodel="jitdefault",
        jit=True,
    )


def _optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine, opt_level: int) -> None:
    if opt_level <= 0:
        return
    pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    vec = opt_level >= 2
    pto.loop_vectorization = vec
    pto.slp_vectorization = vec
    pto.loop_unrolling = vec
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)


def _parse_and_verify(llvm_ir: str, name: str) -> llvm.ModuleRef:
    try:
        mod = llvm.parse_assembly(llvm_ir)
    except RuntimeError as exc:
        raise RuntimeError(f"kcompiler: LLVM IR of module {name!r} does not parse:\n{exc}") from None
    try:
        mod.verify()
    except RuntimeError as exc:
        raise RuntimeError(f"kcompiler: LLVM verifier rejected module {name!r}:\n{exc}") from None
    return mod


def _optimized(llvm_ir: str, opt_level: int, name: str):
    """(module, target machine): ``llvm_ir`` parsed, verified, set for the host and optimised."""
    mod = _parse_and_verify(llvm_ir, name)
    mod.triple = host_target_info()[0]
    tm = _target_machine(opt_level)
    mod.data_layout = str(tm.target_data)
    _optimize(mod, tm, opt_level)
    return mod, tm


def compile_to_object(llvm_ir: str, opt_level: int, name: str) -> bytes:
    """Parse, verify, optimise and emit ``llvm_ir`` for the host: its object code."""
    mod, tm = _optimized(llvm_ir, opt_level, name)
    return tm.emit_object(mod)


def emit_assembly(llvm_ir: str, *, opt_level: int | None = None, name: str = "module") -> str:
    """The host assembly of ``llvm_ir`` after the same pipeline as :func:`compile_ir`
    (for inspection and tests; not cached)."""
    initialize()
    with _LOCK:
        mod, tm = _optimized(llvm_ir, default_opt_level() if opt_level is None else opt_level, name)
        return tm.emit_assembly(mod)


def optimized_ir(llvm_ir: str, *, opt_level: int | None = None, name: str = "module") -> str:
    """The LLVM IR of ``llvm_ir`` after the optimisation pipeline (not cached)."""
    initialize()
    with _LOCK:
        mod, _ = _optimized(llvm_ir, default_opt_level() if opt_level is None else opt_level, name)
        return str(mod)


def _load_objects(objects: list[bytes], opt_level: int, name: str) -> tuple[llvm.ExecutionEngine, llvm.TargetMachine]:
    """One MCJIT engine holding ``objects``; their symbols resolve against each other
    (and the process, llvm.add_symbol) when the engine is finalized."""
    tm = _target_machine(opt_level)
    holder = llvm.parse_assembly("")
    holder.triple = host_target_info()[0]
    holder.name = f"{name}.holder"
    engine = llvm.create_mcjit_compiler(holder, tm)
    for obj in objects:
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    return engine, tm


@dataclass(eq=False)
class CompiledModule:
    """A module -- or a group of separately compiled units (:func:`compile_units`) --
    loaded into its own MCJIT engine, freed when this object is collected.

    For a group, ``key`` and ``object_code`` are the last unit's (the entry point's),
    ``unit_keys`` lists every distinct unit's key, and ``from_cache`` is true when
    every unit came from the cache."""

    name: str
    key: str
    opt_level: int
    from_cache: bool
    object_code: bytes = field(repr=False)
    compile_seconds: float = 0.0
    unit_keys: tuple = ()
    _engine: object = field(default=None, repr=False)
    _tm: object = field(default=None, repr=False)
    _addresses: dict = field(default_factory=dict, repr=False)
    _markers: list = field(default_factory=list, repr=False)

    def confirm(self) -> None:
        """Record that the module's code ran successfully once.

        A module (each unit of a group) loaded from the disk cache carries its
        entry's crash marker until then; this removes them, so later processes
        load the entries without suspicion. Idempotent and cheap after the
        first call; units compiled in this process have no marker. Call it
        after the first successful call into the module (``CompiledGraph.run``
        does).
        """
        while self._markers:
            self._markers.pop().release()

    def address(self, fn_name: str) -> int:
        """Address of a function (or global) of the module; KeyError if absent."""
        addr = self._addresses.get(fn_name)
        if addr is None:
            with _LOCK:
                addr = self._engine.get_function_address(fn_name)
                if not addr:
                    addr = self._engine.get_global_value_address(fn_name)
            if not addr:
                raise KeyError(f"symbol {fn_name!r} not found in compiled module {self.name!r}")
            self._addresses[fn_name] = addr
        return addr

    def function(self, fn_name: str, restype, *argtypes):
        """A ctypes function for ``fn_name`` (``restype=None`` for void).

        The returned object references this module, so the engine's code stays
        loaded while the function can be called.
        """
        proto = ctypes.CFUNCTYPE(restype, *argtypes)
        f = proto(self.address(fn_name))
        f._kc_module = self  # keep-alive
        return f


def compile_ir(llvm_ir: str, *, opt_level: int | None = None, name: str = "module") -> CompiledModule:
    """Compile LLVM IR text for the host and load it.

    Parses and verifies the IR (a failure raises ``RuntimeError`` naming the
    module and carrying LLVM's message), optimises it with the new pass
    manager at ``opt_level`` (default :func:`default_opt_level`; loop and SLP
    vectorisation and unrolling on for ``opt_level >= 2``), emits an object
    file and loads it into a fresh MCJIT engine. Object code is cached on disk
    (see the module docstring); a cache hit skips parsing and optimisation and
    only links the object (milliseconds). A module loaded from the cache must
    be confirmed (:meth:`CompiledModule.confirm`) after its first successful
    call.
    """
    if opt_level is None:
        opt_level = default_opt_level()
    opt_level = int(opt_level)
    if not 0 <= opt_level <= 3:
        raise ValueError(f"opt_level must be 0..3, got {opt_level}")
    initialize()
    t0 = time.perf_counter()
    key = cache_key(llvm_ir, opt_level)
    directory = cache.CacheDir.open() if cache_enabled() else None
    if directory is None:
        return _compile_and_load(llvm_ir, key, opt_level, name, t0)
    try:
        return _compile_with_cache(directory, llvm_ir, key, opt_level, name, t0)
    finally:
        directory.close()


def _compile_with_cache(directory: cache.CacheDir, llvm_ir: str, key: str, opt_level: int, name: str,
                        t0: float) -> CompiledModule:
    """:func:`compile_ir` with a trusted cache directory: load entry ``key`` if
    it is valid and has not crashed a process, else compile and write it."""
    payload, marker_state = _lookup(directory, key)
    if payload is cache.REFUSED:
        return _compile_and_load(llvm_ir, key, opt_level, name, t0)
    if payload is not None:
        cm = _load_entry(directory, payload, key, marker_state, opt_level, name, t0)
        if cm is not None:
            return cm
    cm = _compile_and_load(llvm_ir, key, opt_level, name, t0)
    directory.write_entry(key, cm.object_code)
    directory.evict(keep=key)
    return cm


def _lookup(directory: cache.CacheDir, key: str) -> tuple[bytes | None | object, str]:
    """(entry ``key``'s payload, or None, or cache.REFUSED; its crash marker's state)."""
    marker_state = directory.marker_state(key)
    if marker_state == "crashed":
        # The last process that loaded this entry died before its first
        # successful call: never load it again.
        directory.remove(f"{key}.kco")
        directory.remove(f"{key}.loading")
        cache.count("crashed")
        return None, marker_state
    return directory.read_entry(key), marker_state


def _load_entry(directory: cache.CacheDir, payload: bytes, key: str, marker_state: str, opt_level: int,
                name: str, t0: float) -> CompiledModule | None:
    """Load a valid entry's object code under a crash marker. No marker of our
    own is needed while another live process holds one. None when the marker
    cannot be written (the entry is not loaded) or LLVM rejects the object (the
    entry is deleted)."""
    try:
        marker = directory.put_marker(key) if marker_state == "absent" else None
    except OSError:
        return None
    try:
        with _LOCK:
            engine, tm = _load_objects([payload], opt_level, name)
    except RuntimeError:
        if marker is not None:
            marker.release()
        directory.remove(f"{key}.kco")
        cache.count("corrupt")
        return None
    cache.count("hits")
    return _new_module(name, key, opt_level, True, payload, t0, engine, tm, [marker] if marker else [])


def _compile_and_load(llvm_ir: str, key: str, opt_level: int, name: str, t0: float) -> CompiledModule:
    cache.count("misses")
    with _LOCK:
        obj = compile_to_object(llvm_ir, opt_level, name)
        engine, tm = _load_objects([obj], opt_level, name)
    return _new_module(name, key, opt_level, False, obj, t0, engine, tm, [])


def _new_module(name, key, opt_level, from_cache, obj, t0, engine, tm, markers, unit_keys=()) -> CompiledModule:
    cm = CompiledModule(
        name=name,
        key=key,
        opt_level=opt_level,
        from_cache=from_cache,
        object_code=obj,
        compile_seconds=time.perf_counter() - t0,
        unit_keys=tuple(unit_keys),
        _engine=engine,
        _tm=tm,
        _markers=markers,
    )
    # atexit=False: at interpreter exit a daemon thread may still be running its code
    weakref.finalize(cm, _free_engine, engine).atexit = False
    with _LOCK:
        _LIVE_MODULES.add(cm)
    return cm


@dataclass
class LazyUnit:
    """A unit whose cache key is already known (module.py remembers, per kernel signature, the
    key its IR had) and whose IR text is generated only when the cache cannot supply the
    object: a warm start skips generating IR for every kernel it finds."""
    key: str
    make: Callable[[], str]
    _text: str = None

    def text(self) -> str:
        if self._text is None:
            self._text = self.make()
        return self._text

    def __str__(self):
        return self.text()


def _unit_key(unit, opt_level: int) -> str:
    return unit.key if isinstance(unit, LazyUnit) else cache_key(unit, opt_level)


def _unit_text(unit, opt_level: int) -> str:
    """The unit's IR text; a lazy unit's text must hash to the key it was promised under."""
    if not isinstance(unit, LazyUnit):
        return unit
    text = unit.text()
    if cache_key(text, opt_level) != unit.key:
        raise KCompilerError("a remembered kernel generated different IR than it did before (its signature misses "
                             "an input of code generation): set KCOMPILER_NO_CACHE=1 and report this")
    return text


def compile_units(units: list[tuple[str, int]], *, name: str = "module", before_load=None) -> CompiledModule:
    """Compile units of LLVM IR separately and load them all into one MCJIT engine.

    ``units``: ``[(ir text, opt level)]``, the unit that defines the entry point
    last. Each unit is parsed, verified, optimised at its own level and emitted
    on its own, through the disk cache under its own :func:`cache_key` (the key
    scheme and trust model of :func:`compile_ir`, one entry per unit); units
    with equal keys are compiled and loaded once, so units must define distinct
    external symbols unless they are identical. A unit loaded from the cache
    carries its crash marker until the group's :meth:`CompiledModule.confirm`.
    ``cache_stats()`` counts a hit or a miss per distinct unit. A unit may be a
    :class:`LazyUnit` instead of text: its IR is generated only if its object is not cached.
    ``before_load()`` runs before the objects are loaded (the support library's symbols, which
    the units call, are published by then), and before this process compiles any unit.
    """
    initialize()
    t0 = time.perf_counter()
    wanted = {}  # key -> (ir text, opt level), distinct units in order
    for llvm_ir, opt_level in units:
        opt_level = int(opt_level)
        if not 0 <= opt_level <= 3:
            raise ValueError(f"opt_level must be 0..3, got {opt_level}")
        wanted.setdefault(_unit_key(llvm_ir, opt_level), (llvm_ir, opt_level))
    keys = list(wanted)
    entry_key = _unit_key(units[-1][0], int(units[-1][1]))
    directory = cache.CacheDir.open() if cache_enabled() else None
    objects, markers, refused = {}, [], set()

    def texts(key):
        unit, level = wanted[key]
        return _unit_text(unit, level), level

    try:
        if directory is not None:
            for key in keys:
                payload, marker_state = _lookup(directory, key)
                if payload is cache.REFUSED:
                    refused.add(key)  # left where it is: never overwritten
                elif payload is not None:
                    try:
                        marker = directory.put_marker(key) if marker_state == "absent" else None
                    except OSError:
                        continue  # not loaded without its marker: compiled instead
                    objects[key] = payload
                    if marker is not None:
                        markers.append(marker)
        cached = list(objects)
        compiled = [key for key in keys if key not in objects]
        objects.update(zip(compiled, _compile_objects([texts(key) for key in compiled], name, wait=before_load)))
        load_level = max(level for _, level in wanted.values())
        if before_load is not None:
            before_load()
        try:
            with _LOCK:
                engine, tm = _load_objects([objects[key] for key in keys], load_level, name)
        except RuntimeError:
            if not cached:
                raise
            # LLVM rejected a cached object (which one it does not say): every unit
            # that came from the cache is deleted and compiled again.
            while markers:
                markers.pop().release()
            for key in cached:
                directory.remove(f"{key}.kco")
                cache.count("corrupt")
            objects.update(zip(cached, _compile_objects([texts(key) for key in cached], name)))
            compiled, cached = keys, []
            with _LOCK:
                engine, tm = _load_objects([objects[key] for key in keys], load_level, name)
        for _ in cached:
            cache.count("hits")
        if directory is not None:
            written = [key for key in compiled if key not in refused]
            for key in written:
                directory.write_entry(key, objects[key])
            if written:
                directory.evict(keep=set(keys))
    finally:
        if directory is not None:
            directory.close()
    return _new_module(name, entry_key, load_level, not compiled, objects[entry_key], t0, engine, tm, markers,
                       unit_keys=keys)


# Fewer units than this are compiled in this process alone: a helper process takes ~0.1 s to start.
_MIN_UNITS_FOR_WORKER = 4


def compile_jobs() -> int:
    """How many processes compile units: ``$KCOMPILER_COMPILE_JOBS``, else the CPUs this process
    may run on, at most 2 (one helper process; see compile_worker.py)."""
    raw = os.environ.get("KCOMPILER_COMPILE_JOBS", "").strip()
    if not raw:
        return min(len(os.sched_getaffinity(0)), 2)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"KCOMPILER_COMPILE_JOBS must be a number of processes >= 1, got {raw!r}")
    return int(raw)


def _compile_objects(units: list[tuple[str, int]], name: str, wait=None) -> list[bytes]:
    """The object code of each ``(ir text, opt level)`` unit (each counted as a miss).

    With :func:`compile_jobs` >= 2 and enough units, a helper process (compile_worker.py)
    takes units from the same queue as this process, one at a time, so the faster side does
    more. The queue holds the largest units first (longest processing time first: a large
    unit taken last leaves the other side idle while it compiles; W2's largest, a Winograd
    pair of gradients, takes ~0.75 s at O3). This process first calls ``wait()`` (the support
    library's build in a thread of this process, which holds the LLVM lock while it compiles):
    a unit it took before would wait for the lock while the helper could have compiled it.
    Whatever the helper could not compile (it failed to start, died, or LLVM rejected
    the unit) is compiled here, so errors carry the usual message."""
    for _ in units:
        cache.count("misses")
    objects = [None] * len(units)
    queue = sorted(range(len(units)), key=lambda i: -_compile_cost(*units[i]))
    queue_lock = threading.Lock()

    def take():
        with queue_lock:
            return queue.pop(0) if queue else None

    helper = None
    if compile_jobs() >= 2 and len(units) >= _MIN_UNITS_FOR_WORKER:
        helper = threading.Thread(target=_compile_in_worker, args=(units, objects, take), daemon=True)
        helper.start()
    try:
        if wait is not None:
            wait()
        while (i := take()) is not None:
            with _LOCK:
                objects[i] = compile_to_object(*units[i], name)
    finally:
        if helper is not None:
            with queue_lock:
                queue.clear()  # on an error here, the helper stops after its current unit
            helper.join()
    for i, obj in enumerate(objects):
        if obj is None:
            with _LOCK:
                objects[i] = compile_to_object(*units[i], name)
    return objects


def _compile_cost(llvm_ir: str, opt_level: int) -> int:
    """A unit's compile time, roughly: its IR's length (W2's units at O3: 0.5-535 kB took
    3-750 ms, in the same order), less for the lighter levels."""
    return len(llvm_ir) * (2 if opt_level >= 2 else 1)


def _compile_in_worker(units, objects, take) -> None:
    """Feed units taken from the queue to a compile_worker process until the queue is empty
    or the worker fails (a unit it did not compile stays None)."""
    from .compile_worker import read_message, write_message
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        worker = subprocess.Popen([sys.executable, "-m", "kcompiler.codegen.llvm.compile_worker",
                                   *host_target_info()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    except OSError:
        return
    try:
        while (i := take()) is not None:
            llvm_ir, opt_level = units[i]
            write_message(worker.stdin, opt_level, llvm_ir.encode())
            reply = read_message(worker.stdout)
            if reply is None or reply[0] != 0:
                objects[i] = None
                break
            objects[i] = reply[1]
    except OSError:
        pass
    finally:
        try:
            worker.stdin.close()
        except OSError:
            pass
        worker.stdout.close()
        worker.wait()


def _free_engine(engine: llvm.ExecutionEngine) -> None:
    # under _LOCK: disposing the engine deletes its module from LLVM's global
    # context, which another thread may be parsing IR into
    with _LOCK:
        engine.close()


def live_module_count() -> int:
    """How many compiled modules (MCJIT engines) are loaded in this process now."""
    with _LOCK:
        return len(_LIVE_MODULES)

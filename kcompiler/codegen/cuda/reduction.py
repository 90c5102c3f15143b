"""Reductions in a kernel description, as the CUDA renderer runs them on a block of threads.

A description says a reduction the way one thread computes it: a serial loop folding values
into a local or into an output element. Reordering that fold is valid when its combine is
associative and commutative (``add``, ``max``, ``min``: float addition up to rounding, which
the suite's float32 tolerances cover; ``max``/``min`` propagate NaN whatever the order) and
nothing else happens in the loop. This module finds such folds and checks every condition
that makes splitting them over threads safe; anything it does not recognise is rendered
serially, as before (correct, slower). Two shapes (schedule/reduce.py makes both):

- ``row_body``: the statements inside a parallel nest (a row), made of row locals, loop
  nests over the row (*passes*) and stores of the row's results. A reduction pass only
  folds values into row locals (``acc = op(acc, value)``, or argmax/argmin's
  ``if better(value, best): best, best_at = value, index``); a map pass only stores. Passes
  are dealt out over the block's threads by the same rule (flat iteration f goes to thread
  f mod threads), so each buffer element a pass stores must be stored and loaded at one
  index of one nest (injective in it): then only the thread that wrote an element reads it
  back, and passes need no barrier between them. Softmax and its kin are such bodies.
- ``accumulation``: a nest of serial loops around one read-modify-write
  ``b[I] = op(b[I], value)`` where I is affine, injective in the loops it uses (*columns*)
  and independent of the others (*reduced*): the fold of each column over the reduced
  loops (a bias gradient accumulating rows into an output row).

``fission`` splits a parallel nest around several statements into one nest per statement
(valid: iterations are independent and no local links the statements) when one of them is
an accumulation worth a block reduction.
"""
import math
from dataclasses import dataclass, replace

import numpy as np

from ...schedule.kernel import INDEX, Assign, Call, Const, If, Load, Local, Loop, Store, Var, call

COMBINE = ("add", "max", "min")

# The two values argmax/argmin's ``better`` compares (never a description's names: not C
# identifiers).
CANDIDATE, CURRENT = "@candidate", "@current"


@dataclass(frozen=True)
class Combine:
    """How two partial results of one reduction merge: by ``op`` (add, max, min) for one value,
    or, for argmax/argmin, as pairs (value, index): the value that is ``better`` (an
    expression over Vars CANDIDATE and CURRENT: whether the candidate beats the current
    value) wins, a tie goes to the lower index."""
    dtypes: tuple
    op: str = None
    better: object = None


@dataclass(frozen=True)
class Reduction:
    """Row locals ``vars`` a pass folds values into: (acc,) or (best, best_at)."""
    vars: tuple
    combine: Combine


@dataclass(frozen=True)
class Pass:
    """A loop nest over the row: the statements ``body`` inside the perfect nest ``loops``
    either fold values into ``reductions`` or (no reductions) only store."""
    loops: tuple
    body: tuple
    reductions: tuple

    @property
    def extent(self):
        return math.prod(l.extent for l in self.loops)

    @property
    def signature(self):
        """The nest's variables and extents: passes of one signature deal out alike."""
        return tuple((l.var.name, l.extent) for l in self.loops)


@dataclass(frozen=True)
class RowBody:
    """``items``: the row body's statements, its loop nests as Passes; ``locals``: the Vars of
    its row locals."""
    items: tuple
    locals: tuple

    @property
    def passes(self):
        return [i for i in self.items if isinstance(i, Pass)]


@dataclass(frozen=True)
class Accumulation:
    """``store`` is ``b[I] = op(b[I], value)`` inside serial loops: ``columns`` those I walks,
    ``reduced`` the others; ``strides``: I's coefficient of each column variable."""
    store: Store
    op: str
    value: object
    columns: tuple
    reduced: tuple
    strides: dict

    @property
    def extent(self):
        return math.prod(l.extent for l in self.reduced)


def identity(op, dtype):
    """The identity of combine ``op`` on ``dtype`` values."""
    floating = dtype.startswith("float")
    if op == "add":
        return 0.0 if floating else 0
    if floating:
        return -math.inf if op == "max" else math.inf
    info = np.iinfo(dtype)
    return int(info.min if op == "max" else info.max)


# ---- expressions -----------------------------------------------------------------------------

def _subexpressions(e):
    yield e
    for child in (e.args if isinstance(e, Call) else (e.index,) if isinstance(e, Load) else ()):
        yield from _subexpressions(child)


def _statement_exprs(s):
    """The expressions statement ``s`` evaluates, its nested statements' included."""
    for name in ("index", "value", "init", "cond"):
        if hasattr(s, name):
            yield from _subexpressions(getattr(s, name))
    for part in ("body", "then", "orelse"):
        for inner in getattr(s, part, ()):
            yield from _statement_exprs(inner)


def _variables(e):
    return {x.name for x in _subexpressions(e) if isinstance(x, Var)}


def _substitute(e, mapping):
    if e in mapping:
        return mapping[e]
    if isinstance(e, Call):
        return replace(e, args=tuple(_substitute(a, mapping) for a in e.args))
    if isinstance(e, Load):
        return replace(e, index=_substitute(e.index, mapping))
    return e


def affine(e):
    """(coefficients {variable name: int}, constant) of index expression ``e``, or None where
    it is not affine in its variables."""
    if isinstance(e, Const) and e.dtype == INDEX:
        return {}, int(e.value)
    if isinstance(e, Var) and e.dtype == INDEX:
        return {e.name: 1}, 0
    if not (isinstance(e, Call) and e.op in ("add", "sub", "mul") and len(e.args) == 2 and e.dtype == INDEX):
        return None
    a, b = affine(e.args[0]), affine(e.args[1])
    if a is None or b is None:
        return None
    if e.op == "mul":
        if a[0] and b[0]:
            return None
        (coefficients, constant), k = (a, b[1]) if not b[0] else (b, a[1])
        return {v: c * k for v, c in coefficients.items() if c * k}, constant * k
    sign = 1 if e.op == "add" else -1
    coefficients = dict(a[0])
    for v, c in b[0].items():
        coefficients[v] = coefficients.get(v, 0) + sign * c
    return {v: c for v, c in coefficients.items() if c}, a[1] + sign * b[1]


def _injective(coefficients, loops):
    """Whether an affine index with ``coefficients`` differs between every two iterations of
    the nest ``loops`` (sufficient: each coefficient exceeds the span of the smaller ones)."""
    span = 0
    for c, extent in sorted((abs(coefficients.get(l.var.name, 0)), l.extent) for l in loops if l.extent > 1):
        if c <= span:
            return False
        span += c * (extent - 1)
    return True


def _perfect_nest(statement):
    """(the perfect nest of loops starting at ``statement``, the statements inside it)."""
    loops, body = [], (statement,)
    while len(body) == 1 and isinstance(body[0], Loop):
        loops.append(body[0])
        body = body[0].body
    return tuple(loops), body


# ---- accumulations into memory ---------------------------------------------------------------

def accumulation(statement, outer):
    """``statement`` (inside the parallel loops ``outer``) as an Accumulation, or None."""
    if not isinstance(statement, Loop):
        return None
    nest, body = _perfect_nest(statement)
    if any(l.parallel for l in nest) or len(body) != 1 or not isinstance(body[0], Store):
        return None
    store = body[0]
    update = store.value
    if not (isinstance(update, Call) and update.op in COMBINE and len(update.args) == 2) or update.dtype == "bool":
        return None
    others = [a for a in update.args if a != Load(store.buffer, store.index, update.dtype)]
    index = affine(store.index)
    if len(others) != 1 or index is None:
        return None
    value = others[0]
    names = {l.var.name for l in nest + tuple(outer)}
    reads_target = any(isinstance(x, Load) and x.buffer == store.buffer for x in _subexpressions(value))
    if reads_target or not (_variables(value) | set(index[0])) <= names:
        return None
    columns = tuple(l for l in nest if l.var.name in index[0])
    reduced = tuple(l for l in nest if l.var.name not in index[0])
    if math.prod(l.extent for l in reduced) < 2 or not _injective(index[0], columns):
        return None
    return Accumulation(store, update.op, value, columns, reduced, {l.var.name: index[0][l.var.name] for l in columns})


def fission(loops, body, min_extent):
    """The bodies of one parallel nest ``loops`` per statement of ``body``, when one of them
    is an accumulation of at least ``min_extent`` elements (a bias gradient or a mean over a
    middle axis: fill, accumulate, scale) and no local links them; else None."""
    if not loops or len(body) < 2 or any(isinstance(s, (Local, Assign)) for s in body):
        return None
    if not any((a := accumulation(s, loops)) and a.extent >= min_extent for s in body):
        return None
    parts = []
    for s in body:
        part = (s,)
        for l in reversed(loops):
            part = (replace(l, body=part),)
        parts.append(part)
    return parts


# ---- row bodies ---------------------------------------------------------------------------------

def _strict_orders(candidate, current):
    """The tests 'candidate beats current' of argmax and argmin (schedule/reduce.py): strict
    orders (a tie beats nothing) in which, for floats, NaN beats every number."""
    if candidate.dtype.startswith("float"):
        return [call("and", call("not", call(op, candidate, current)), call("not", call("isnan", current)))
                for op in ("le", "ge")]
    return [call("gt", candidate, current), call("lt", candidate, current)]


def _arg_reduction(s, row_locals, nest, constants):
    """``If(better(value, best), (best = value, best_at = index))`` as a Reduction, or None:
    ``better`` one of _strict_orders, ``index`` increasing in the nest's iteration order and
    above the current ``best_at`` (a row constant), so that a tie goes to the first index
    however the partials merge."""
    if not (isinstance(s, If) and not s.orelse and len(s.then) == 2 and all(isinstance(a, Assign) for a in s.then)):
        return None
    set_best, set_at = s.then
    best, at = set_best.var, set_at.var
    if best.name not in row_locals or at.name not in row_locals or best.name == at.name or at.dtype != INDEX:
        return None
    candidate, current = Var(CANDIDATE, best.dtype), Var(CURRENT, best.dtype)
    better = _substitute(s.cond, {set_best.value: candidate, best: current})
    if better not in _strict_orders(candidate, current) or _variables(set_best.value) & {best.name, at.name}:
        return None
    index = affine(set_at.value)
    if index is None or not set(index[0]) <= {l.var.name for l in nest}:
        return None
    span = 0
    for l in reversed(nest):  # lexicographic: each loop's step exceeds what the loops inside it span
        c = index[0].get(l.var.name, 0)
        if l.extent > 1 and c <= span:
            return None
        span += c * (l.extent - 1)
    if not (at.name in constants and constants[at.name] < index[1]):
        return None
    return Reduction((best, at), Combine((best.dtype, INDEX), better=better))


def _fold(s, row_locals):
    """``acc = op(acc, value)`` (op in COMBINE) into row local ``acc`` as a Reduction, or None."""
    if not (isinstance(s, Assign) and s.var.name in row_locals and isinstance(s.value, Call)
            and s.value.op in COMBINE and len(s.value.args) == 2 and s.var.dtype != "bool"):
        return None
    if len([a for a in s.value.args if a != s.var]) != 1:
        return None
    return Reduction((s.var,), Combine((s.var.dtype,), s.value.op))


def _pass(loop_statement, row_locals, constants):
    """A loop nest of a row body as a Pass, or None."""
    nest, body = _perfect_nest(loop_statement)
    if all(isinstance(s, Store) for s in body):
        return Pass(nest, body, ())
    reductions, targets = [], set()
    for s in body:
        r = _arg_reduction(s, row_locals, nest, constants) or _fold(s, row_locals)
        if r is None or targets & {v.name for v in r.vars}:
            return None
        targets |= {v.name for v in r.vars}
        reductions.append(r)
    for s in body:  # the values folded read no local this pass updates
        values = [a.value for a in s.then] if isinstance(s, If) else [a for a in s.value.args if a != s.var]
        if any(_variables(v) & targets for v in values):
            return None
    return Pass(nest, body, tuple(reductions))


def row_body(body, written):
    """The statements ``body`` inside a parallel nest as a RowBody with at least one reduction
    pass, or None. ``written``: the buffers the kernel part writes; the row's own statements
    read none of them, and every element a pass stores is stored and loaded at one index of
    one nest, injective in it (see the module's docstring)."""
    row_locals, items, constants, row_stored = {}, [], {}, set()
    for s in body:
        if isinstance(s, (Local, Assign)):
            if isinstance(s, Assign) and s.var.name not in row_locals:
                return None
            row_locals[s.var.name] = s.var
            value = s.init if isinstance(s, Local) else s.value
            constants.pop(s.var.name, None)
            if isinstance(value, Const):
                constants[s.var.name] = value.value
            items.append(s)
        elif isinstance(s, Store):
            row_stored.add(s.buffer)
            items.append(s)
        elif isinstance(s, Loop):
            p = _pass(s, row_locals, constants)
            if p is None:
                return None
            for r in p.reductions:
                for v in r.vars:
                    constants.pop(v.name, None)
            items.append(p)
        else:
            return None
    passes = [i for i in items if isinstance(i, Pass)]
    if not any(p.reductions for p in passes):
        return None
    owner = {}  # buffer -> (the nest, the index) every pass stores it at
    for p in passes:
        for s in p.body:
            if isinstance(s, Store):
                index = affine(s.index)
                key = (p.signature, s.index)
                if s.buffer in row_stored or owner.setdefault(s.buffer, key) != key or index is None \
                        or not _injective(index[0], p.loops):
                    return None
    for item in items:
        inside = item.body if isinstance(item, Pass) else (item,)
        for x in (x for s in inside for x in _statement_exprs(s)):
            if isinstance(x, Load) and x.buffer in written \
                    and not (isinstance(item, Pass) and owner.get(x.buffer) == (item.signature, x.index)):
                return None
    return RowBody(tuple(items), tuple(row_locals.values()))

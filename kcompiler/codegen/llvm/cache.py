"""The on-disk object cache of compiled modules and its trust model
(docs/kernel-cache.md); :func:`kcompiler.codegen.llvm.jit.compile_ir` uses it.

The cache loads only what this user compiled:

* the directory (``$KCOMPILER_CACHE_DIR``, else ``~/.cache/kcompiler``, created
  with mode 0o700 when missing) and each entry must be owned by the effective
  user and not writable by group or others, and an entry must be a regular file,
  not a symbolic link. Otherwise the cache is not used: one
  :class:`KernelCacheWarning` per directory and process says which path, what
  was found and what is expected, and modules are compiled in memory;
* each entry stores its own key inside the checksummed part, so an entry copied
  under another key's name is rejected (counted as corrupt, deleted,
  recompiled), as is a damaged one: neither is handed to the loader;
* before an entry is first loaded in a process its crash marker
  ``<key>.loading`` is created, locked with ``flock`` for as long as the
  process lives; the first successful call into the module removes it
  (``CompiledModule.confirm``), and so does a normal exit. A marker found
  unlocked was left by a process that died loading or first calling the entry:
  the entry is deleted and recompiled, never loaded again.

Entry format (one file ``<sha256 key>.kco`` per compiled module or unit, mode 0o600)::

    offset  size  field
    0       8     magic  b"KCOBJ\\x02\\n\\x00"
    8       8     payload length, little-endian u64
    16      32    sha256 of (key + payload)
    48      64    key: the entry's own cache key, hex
    112     n     payload: the ELF object emitted by the target machine

Entries are written to a temporary file in the directory and renamed into
place, so concurrent processes (pytest-xdist workers) can share one directory.
After each write, least recently used entries (by mtime, set on every hit) are
deleted until the entries fit in ``$KCOMPILER_CACHE_MAX_BYTES`` (read once,
default 1 GiB); the entry just written is always kept.

Environment variables: ``KCOMPILER_CACHE_DIR``, ``KCOMPILER_CACHE_MAX_BYTES``,
and ``KCOMPILER_NO_CACHE`` (a non-empty value other than ``0`` turns the cache
off: nothing is read or written).
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import hashlib
import os
import secrets
import stat
import struct
import threading
import time
import warnings
from pathlib import Path

__all__ = [
    "FORMAT_VERSION",
    "CacheDir",
    "KernelCacheWarning",
    "REFUSED",
    "cache_dir",
    "cache_enabled",
    "cache_max_bytes",
    "cache_path",
    "cache_stats",
    "count",
    "encode_entry",
    "marker_path",
    "reset_cache_stats",
]

#: Part of every cache key: a new entry format never meets entries of an old one.
FORMAT_VERSION = "2"
_MAGIC = b"KCOBJ\x02\n\x00"
_HEADER = struct.Struct("<8sQ32s64s")  # magic, payload length, sha256(key + payload), key

_LOCK = threading.Lock()
# Counted here and by compile_ir (hits, misses); see cache_stats.
_STATS = {"hits": 0, "misses": 0, "corrupt": 0, "crashed": 0, "refused": 0,
          "evictions": 0, "writes": 0, "write_errors": 0}

_DEFAULT_CACHE_MAX_BYTES = 1 << 30

# Directories already warned about in this process: one warning per directory.
_WARNED_DIRS: set[str] = set()


class KernelCacheWarning(UserWarning):
    """The kernel cache directory or one of its entries is not trusted, so
    kernels are compiled in memory instead (see docs/kernel-cache.md)."""


def cache_stats() -> dict[str, int]:
    """Counters of the object cache in this process (a copy).

    ``hits``: modules loaded from disk; ``misses``: modules compiled (no usable
    entry, or cache disabled); ``corrupt``: entries found damaged or stored
    under another key, deleted; ``crashed``: entries deleted because a process
    died while loading or first calling them (their crash marker was left
    behind); ``refused``: directories or entries not trusted (wrong owner,
    writable by group or others, symbolic link); ``evictions``: entries deleted
    to keep the directory under its size limit; ``writes``: entries written;
    ``write_errors``: entries that could not be written.
    """
    with _LOCK:
        return dict(_STATS)


def reset_cache_stats() -> None:
    with _LOCK:
        for k in _STATS:
            _STATS[k] = 0


def count(counter: str) -> None:
    with _LOCK:
        _STATS[counter] += 1


def cache_enabled() -> bool:
    v = os.environ.get("KCOMPILER_NO_CACHE", "")
    return v in ("", "0")


def cache_dir() -> Path:
    d = os.environ.get("KCOMPILER_CACHE_DIR")
    if d:
        return Path(d)
    return Path.home() / ".cache" / "kcompiler"


@functools.cache
def cache_max_bytes() -> int:
    """The size limit of the cache directory's entries: ``$KCOMPILER_CACHE_MAX_BYTES``
    (bytes, >= 0), else 1 GiB. Read once per process (``cache_clear()`` reads again)."""
    raw = os.environ.get("KCOMPILER_CACHE_MAX_BYTES", "").strip()
    if not raw:
        return _DEFAULT_CACHE_MAX_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"KCOMPILER_CACHE_MAX_BYTES must be a number of bytes >= 0, got {raw!r}")
    return limit


def cache_path(key: str) -> Path:
    return cache_dir() / f"{key}.kco"


def marker_path(key: str) -> Path:
    """The crash marker of entry ``key``: present while a process loads the
    entry and has not yet called it successfully."""
    return cache_dir() / f"{key}.loading"


def encode_entry(key: str, payload: bytes) -> bytes:
    """An entry file's bytes: the header (with the entry's own key) and the payload."""
    stored_key = key.encode("ascii")
    digest = hashlib.sha256(stored_key)
    digest.update(payload)
    return _HEADER.pack(_MAGIC, len(payload), digest.digest(), stored_key) + payload


def decode_entry(data: bytes, key: str) -> bytes | None:
    """The payload of an entry file's bytes, or None if the magic, the length,
    the checksum or the stored key (an entry copied under another key's name)
    does not match."""
    if len(data) < _HEADER.size:
        return None
    magic, length, digest, stored_key = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if magic != _MAGIC or length != len(payload) or stored_key != key.encode("ascii"):
        return None
    expected = hashlib.sha256(stored_key)
    expected.update(payload)
    return payload if expected.digest() == digest else None


def _trust_problem(st: os.stat_result) -> str | None:
    """Why a file or directory with status ``st`` must not be trusted, or None.

    Only this user may be able to change what the cache holds: the owner must
    be the effective user and neither group nor others may write."""
    mode = stat.S_IMODE(st.st_mode)
    found = f"found owner uid {st.st_uid}, mode {mode:#o}"
    if st.st_uid != os.geteuid():
        return f"it is not owned by this user ({found})"
    if mode & 0o022:
        return f"it is writable by group or others ({found})"
    return None


def _refuse(directory: Path, what: str, path: Path, problem: str) -> None:
    """Count a refused directory or entry and warn once per directory."""
    with _LOCK:
        _STATS["refused"] += 1
        first = str(directory) not in _WARNED_DIRS
        _WARNED_DIRS.add(str(directory))
    if first:
        warnings.warn(
            f"kcompiler: not using the kernel cache {what} {path}: {problem}; expected owner "
            f"uid {os.geteuid()} (this user) and no write permission for group or others "
            f"(chmod 700 for the directory, 600 for entries). Kernels are compiled in memory "
            f"instead (see docs/kernel-cache.md).",
            KernelCacheWarning,
            stacklevel=4,
        )


class Marker:
    """A crash marker this process created: the file exists and this process
    holds an exclusive ``flock`` on it until the entry's first successful call.

    Another process finding the marker unlocked knows that its creator died
    before that call (locks die with their process); finding it locked, it knows
    a live process is trying the entry right now."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd
        self.pid = os.getpid()
        with _MARKER_LOCK:
            _PENDING_MARKERS.add(self)

    def release(self) -> None:
        """Remove the marker (idempotent). Unlink before unlocking, so that no
        other process ever sees it unlocked."""
        with _MARKER_LOCK:
            if self._fd is None:
                return
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
            _PENDING_MARKERS.discard(self)


_MARKER_LOCK = threading.Lock()
_PENDING_MARKERS: set[Marker] = set()


@atexit.register
def _release_pending_markers() -> None:
    # A normal exit proves the entries loaded without crashing the process;
    # those never called will be tried (and marked) again by their next user.
    for marker in list(_PENDING_MARKERS):
        if marker.pid == os.getpid():  # not in a forked child: the parent may still crash
            marker.release()


def _touch(fd: int) -> None:
    """Set a file's mtime to now, from the nanosecond clock: the file system's
    own timestamps are only as fine as a clock tick, too coarse to order uses."""
    now = time.time_ns()
    try:
        os.utime(fd, ns=(now, now))
    except OSError:
        pass


class CacheDir:
    """The cache directory, open and checked: owned by this user and writable by
    nobody else. Every entry operation goes through the directory's descriptor
    (``openat`` and friends), so a directory swapped in after the check is never
    used, and entries are opened without following symbolic links."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls) -> "CacheDir | None":
        """The cache directory, created with mode 0o700 if missing; None if it
        cannot be created or is not trusted (warned once)."""
        path = cache_dir()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            count("write_errors")
            return None
        problem = _trust_problem(os.fstat(fd))
        if problem is not None:
            os.close(fd)
            _refuse(path, "directory", path, problem)
            return None
        return cls(path, fd)

    def close(self) -> None:
        os.close(self.fd)

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def marker_state(self, key: str) -> str:
        """``"absent"``; ``"on trial"``: a live process holds the marker (it is
        loading the entry or has not called it yet); ``"crashed"``: the marker
        was left by a process that died before the entry's first successful call."""
        try:
            fd = os.open(f"{key}.loading", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except FileNotFoundError:
            return "absent"
        except OSError:
            return "crashed"  # not a file we could have made: clear it like a crash marker
        try:
            # shared: two processes checking a crash marker at once both see it unlocked
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "on trial"
        else:
            # unlinked between our open and flock: confirmed by its owner just now
            return "crashed" if os.fstat(fd).st_nlink else "absent"
        finally:
            os.close(fd)

    def put_marker(self, key: str) -> Marker | None:
        """Create entry ``key``'s marker, already locked: it is made under a
        temporary name, locked, then hard-linked into place. None if another
        process's marker appeared first; OSError if it cannot be written."""
        tmp = f".tmp-{secrets.token_hex(8)}.loading"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"pid {os.getpid()}\n".encode())  # for people looking at the directory
            os.link(tmp, f"{key}.loading", src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        finally:
            self.remove(tmp)
        return Marker(self.path / f"{key}.loading", fd)

    def read_entry(self, key: str) -> bytes | None | object:
        """The payload of entry ``key``: None if absent or damaged (a damaged
        entry is counted and deleted); ``REFUSED`` if the entry is not trusted
        (a symbolic link, not a regular file, another owner, writable by group
        or others: warned, left alone). A valid entry's mtime is set to now:
        eviction removes the least recently used entries first."""
        name = f"{key}.kco"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse(self.path, "entry", self.path / name, "it is a symbolic link")
                return REFUSED
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            problem = "it is not a regular file" if not stat.S_ISREG(st.st_mode) else _trust_problem(st)
            if problem is not None:
                _refuse(self.path, "entry", self.path / name, problem)
                return REFUSED
            try:
                data = f.read()
            except OSError:
                return None  # unreadable: recompiling rewrites it
            payload = decode_entry(data, key)
            if payload is not None:
                _touch(fd)
        if payload is None:
            count("corrupt")
            self.remove(name)
        return payload

    def write_entry(self, key: str, payload: bytes) -> None:
        """Write entry ``key`` (mode 0o600) to a temporary file, then rename it
        into place: readers see either nothing or a complete entry."""
        tmp = f".tmp-{secrets.token_hex(8)}.kco"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
            with os.fdopen(fd, "wb") as f:
                f.write(encode_entry(key, payload))
                f.flush()
                _touch(fd)
            os.replace(tmp, f"{key}.kco", src_dir_fd=self.fd, dst_dir_fd=self.fd)
            _count_written(self.path, len(payload))
        except OSError:
            # A read-only or full disk must not break compilation.
            count("write_errors")
            self.remove(tmp)
            return
        count("writes")

    def evict(self, keep) -> None:
        """Delete least recently used entries (oldest mtime first, never those named in
        ``keep``: a key or a set of keys) until the entries total at most
        :func:`cache_max_bytes`.

        Listing the directory costs a stat per entry (a cache of 10,000 entries: ~0.1 s), so a
        process lists it once, at its first write, and again only when the total it then saw
        plus what it has written since could exceed the limit. Entries other processes write
        meanwhile are counted at their own next listing: the limit holds up to what concurrent
        processes wrote since."""
        keep = {keep} if isinstance(keep, str) else set(keep)
        limit = cache_max_bytes()
        estimate = _SIZE_ESTIMATES.get((str(self.path), limit))
        if estimate is not None and estimate[0] + estimate[1] <= limit:
            return
        entries = []
        total = 0
        with os.scandir(self.fd) as it:
            for e in it:
                if e.name.endswith(".kco") and not e.name.startswith("."):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_size
                    entries.append((st.st_mtime_ns, e.name, st.st_size))
        for _, name, size in sorted(entries):
            if total <= limit:
                break
            if name[:-len(".kco")] in keep:
                continue
            self.remove(name)
            total -= size
            count("evictions")
        _SIZE_ESTIMATES[(str(self.path), limit)] = [total, 0]


# (cache directory, size limit) -> [bytes of entries at this process's last listing, bytes
# this process has written since]: when evict needs to list the directory again.
_SIZE_ESTIMATES = {}


def _count_written(path: Path, nbytes: int) -> None:
    for (where, _), estimate in _SIZE_ESTIMATES.items():
        if where == str(path):
            estimate[1] += nbytes


REFUSED = object()

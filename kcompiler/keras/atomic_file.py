"""Crash-safe writing of a user's file: the file at the path is the old one or the new one, whole.

``write_file_atomically(path, data)`` writes ``data`` to a new temporary file in the
directory of ``path`` (``.<name>.<random>.tmp``; the same directory, so the same file
system), flushes it to the disk (``fsync``), renames it onto ``path`` (``os.replace``,
atomic on POSIX) and then fsyncs the directory so that the rename itself is on the disk.
Every model and weights file (``Model.save``, ``save_model``, ``save_weights``,
``ModelCheckpoint``) is written through it, so:

* a process killed at any moment of a save (SIGKILL, power loss after the fsyncs) leaves
  the previous file at ``path`` intact; a killed save may leave its temporary file behind;
* a save that fails in Python (disk full: ENOSPC from a write or the fsync, a read-only
  directory, KeyboardInterrupt) raises, leaves the previous file intact and removes its
  temporary file.

The new file gets the previous file's permission bits (or the umask's default for a new
file). ``path`` may be a symbolic link: the file it points to is replaced and the link kept.
Not kept: hard links to the previous file (they keep the old contents) and its owner.

Test-only hook: when the environment variable ``KCOMPILER_TEST_SAVE_KILL_POINT`` is set,
the process kills itself with SIGKILL at that point of the next save, so that a test can
check what a crash leaves behind at deterministic moments. Its values: ``bytes:N`` (after
the first N bytes of the data reached the temporary file), ``after_write``,
``after_fsync`` (the file is complete but not yet renamed) and ``after_replace`` (renamed,
directory not yet fsynced). It is read at each save and does nothing when unset.
"""
import os
import secrets
import signal

TEST_KILL_POINT_ENV = "KCOMPILER_TEST_SAVE_KILL_POINT"


def write_file_atomically(path, data):
    """Replace the file at ``path`` by one holding ``data`` (bytes-like), all or nothing."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    fd, temp = _create_temp_file(target)
    try:
        try:
            _copy_mode_of_previous_file(target, fd)
            write_all(fd, data)
            _test_kill_point("after_write")
            os.fsync(fd)
        finally:
            os.close(fd)
        _test_kill_point("after_fsync")
        os.replace(temp, target)
    except BaseException:
        _remove_quietly(temp)
        raise
    _test_kill_point("after_replace")
    _fsync_directory(directory)


def write_all(fd, data):
    """``os.write`` until all of ``data`` is written (the test hook ``bytes:N`` stops after N bytes)."""
    view = memoryview(data).cast("B")
    kill_after = _test_kill_after_bytes()
    if kill_after is not None and kill_after < len(view):
        view = view[:kill_after]
    else:
        kill_after = None
    while view:
        view = view[os.write(fd, view):]
    if kill_after is not None:
        _kill_self()


def _create_temp_file(target):
    """(fd, path) of a new empty file next to ``target``, created with mode 0o666 so that the
    umask applies as to any new file (tempfile.mkstemp would make it 0o600)."""
    directory, name = os.path.split(target)
    while True:
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue


def _copy_mode_of_previous_file(target, fd):
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    os.fchmod(fd, mode & 0o7777)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- test-only hook ------------------------------------------------------------------------------

def _test_kill_point(point):
    if os.environ.get(TEST_KILL_POINT_ENV) == point:
        _kill_self()


def _test_kill_after_bytes():
    point = os.environ.get(TEST_KILL_POINT_ENV, "")
    return int(point[len("bytes:"):]) if point.startswith("bytes:") else None


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)

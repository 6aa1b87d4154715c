"""Atomic, crash-safe file and directory writes: the one atomic writer of the package.

Every write goes to a temporary sibling whose name says who made it and is renamed into place only
when complete. Temp names have the form::

    .{target name}.{pid}-{process start tick}.{random}.bertrio-{tmp|old}

so a later run can recognise leftovers of *this kind only* (nothing else beside the target is ever
touched) and tell whether their owner is still alive (pid exists and started at the recorded tick, so a
reused pid does not count). ``cleanup_leftovers`` runs before every write to the same target and
removes dead owners' temp files; a dead owner's ``.bertrio-old`` directory is put back when the target
is missing (the recovery step for systems without an atomic exchange).

Replacing an existing directory uses Linux ``renameat2(RENAME_EXCHANGE)`` (via ctypes) so the target
never disappears: readers see the old tree or the new one. Where the call is missing (other OSes, old
glibc, file systems without exchange) the old directory is renamed aside first; a crash between the
two renames is repaired by the next run, as above.

Files and directories are created with ``0o666`` / ``0o777`` masked by the process umask, as ``open``
and ``mkdir`` do (``tempfile`` would create them ``0600`` / ``0700``).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from typing import Iterator

TAG = "bertrio"
_LEFTOVER = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.[0-9a-f]+\.bertrio-(?P<kind>tmp|old)$")
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
_AT_FDCWD = -100


def _start_tick(pid: int) -> int:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22); 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


_MY_START = _start_tick(os.getpid())


def owner_alive(pid: int, start: int) -> bool:
    """Whether the process that made a temp name (``pid`` started at tick ``start``) is still running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if start and os.path.isdir("/proc"):
        return _start_tick(pid) == start
    return True


def temp_name(path: str, kind: str = "tmp") -> str:
    """A fresh temp sibling of ``path`` in this process's name (``kind``: ``tmp`` or ``old``)."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    return os.path.join(parent, f".{base}.{os.getpid()}-{_MY_START}.{secrets.token_hex(4)}.{TAG}-{kind}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def cleanup_leftovers(path: str) -> list[str]:
    """Remove temp siblings of ``path`` left by dead writers; restore a dead writer's ``old`` directory
    when ``path`` is missing. Returns what was removed or restored. Touches nothing else."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        m = _LEFTOVER.match(name)
        if not m or m.group("base") != base or owner_alive(int(m.group("pid")), int(m.group("start"))):
            continue
        full = os.path.join(parent, name)
        if m.group("kind") == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.rename(full, path)  # the recovery step: the old checkpoint comes back
                found.append(full)
                continue
        _remove(full)
        found.append(full)
    return found


def umask() -> int:
    """The process umask, read without changing it where Linux reports it."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when the OS or file system does not offer it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), dst)


_LIBC = []


def _libc():
    if not _LIBC:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            if hasattr(lib, "renameat2"):
                lib.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_uint]
                lib.renameat2.restype = ctypes.c_int
        except OSError:  # pragma: no cover - no C library to load
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def _rename(src: str, dst: str) -> None:
    os.rename(src, dst)


def exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths; False when the system cannot."""
    return _renameat2(a, b, RENAME_EXCHANGE)


def publish(tmp: str, path: str, replace: bool = True) -> None:
    """Move the complete ``tmp`` onto ``path`` so that ``path`` always exists once it has existed.

    A missing ``path`` is created by one rename (``RENAME_NOREPLACE`` where available, so a ``path``
    that appeared meanwhile is never clobbered unless ``replace``). An existing one is swapped with
    ``tmp`` in one atomic exchange, then the old tree (now under the temp name) is removed; without
    exchange the old tree is renamed aside first (a crash in between is repaired by
    ``cleanup_leftovers``).
    """
    if not os.path.lexists(path):
        try:
            if _renameat2(tmp, path, RENAME_NOREPLACE):
                return
        except FileExistsError:
            if not replace:
                raise FileExistsError(f"{path} appeared while it was being written; pass overwrite=True "
                                      f"(--overwrite) to replace it") from None
        if not os.path.lexists(path):
            _rename(tmp, path)
            return
    if not replace:
        raise FileExistsError(f"{path} appeared while it was being written; pass overwrite=True (--overwrite) "
                              f"to replace it")
    if exchange(tmp, path):
        _remove(tmp)  # holds the old tree now
        return
    old = temp_name(path, "old")
    _rename(path, old)
    _rename(tmp, path)
    _remove(old)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A new empty temp file name beside ``path`` (for writers that need a name, e.g. h5py); on success
    it is fsynced and renamed onto ``path``, on any exception removed and ``path`` left untouched."""
    path = os.path.abspath(path)
    cleanup_leftovers(path)
    tmp = temp_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0o666 & ~umask
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator:
    """An open temp file beside ``path``; on success flushed, fsynced and renamed onto ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def atomic_write_text(path: str, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def is_empty_dir(path: str) -> bool:
    """True for an existing directory (not a symlink) with no entries."""
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a new empty temp directory beside ``path``; on success it becomes ``path`` (``publish``).

    An existing ``path`` is refused unless ``overwrite``. Leftovers of dead writers to ``path`` are
    removed first. On any exception the temp directory is removed and ``path`` is untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    cleanup_leftovers(path)
    # An existing empty directory holds nothing to lose (a user's `mkdir out` first): it is replaced.
    replace = overwrite or is_empty_dir(path)
    if os.path.lexists(path) and not replace:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    tmp = temp_name(path)
    os.mkdir(tmp, 0o777)  # 0o777 & ~umask
    try:
        yield tmp
        publish(tmp, path, replace=replace)
    except BaseException:
        _remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------- reading
PIN_ATTEMPTS = 5  # reads restarted when the directory is replaced under them


class _Pin:
    """One attempt at reading directory ``path`` through an open descriptor (see ``pinned_dir``)."""

    def __init__(self, path: str, last: bool):
        self.path, self.last, self.done = path, last, False
        self.fd = None
        if os.path.isdir(path) and os.path.isdir("/proc/self/fd"):
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.pinned = f"/proc/self/fd/{self.fd}" if self.fd is not None else path

    def __enter__(self) -> str:
        return self.pinned

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if error is None:
                self.done = True
                return False
            if self.fd is None or not isinstance(error, (OSError, ValueError)):
                return False
            replaced = False
            with contextlib.suppress(OSError):
                replaced = os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
            if replaced and not self.last:
                return True  # this version was swapped out and removed mid-read: read the new one
            # name the user's path, not /proc/self/fd/N
            error.args = tuple(a.replace(self.pinned, self.path) if isinstance(a, str) else a for a in error.args)
            if isinstance(error, OSError) and isinstance(error.filename, str):
                error.filename = error.filename.replace(self.pinned, self.path)
            return False
        finally:
            if self.fd is not None:
                os.close(self.fd)


def pinned_dir(path: str, attempts: int = PIN_ATTEMPTS) -> Iterator[_Pin]:
    """Read one version of directory ``path`` however often it is replaced meanwhile::

        for attempt in pinned_dir(path):
            with attempt as p:       # p: the directory as opened once (/proc/self/fd/N where Linux has it)
                config = ...read p/config.json...; weights = ...read p/...

    Every file read through ``p`` comes from the directory as it was when opened, even if ``path`` is
    swapped meanwhile (``publish``). When that version is removed mid-read, the failed read is
    restarted on the new one (up to ``attempts`` times); other errors propagate, naming ``path``. A
    file, or a system without ``/proc/self/fd``, is read once as ``path``."""
    for i in range(attempts):
        attempt = _Pin(path, last=i == attempts - 1)
        yield attempt
        if attempt.done or attempt.fd is None:
            return


__all__ = ["pinned_dir", "atomic_file", "atomic_path", "atomic_write_text", "atomic_directory", "publish", "exchange",
           "cleanup_leftovers", "temp_name", "owner_alive", "umask"]

"""Atomic file writes, bounded JSON reading, run-folder locks and safe ``torch.load`` (private).

Shared by data, train, evaluate and the CLI. A file is written to a temporary file in the destination's
directory, flushed and fsynced, moved
over the destination with ``os.replace`` (atomic on POSIX and Windows) and the directory is
fsynced, so a crash leaves either the old file or the new one, never a mix. Payloads saved with
:func:`save_payload` carry a format tag, a version and a SHA-256 digest of their tensors, which
:func:`load_payload` checks, so truncated, corrupt and foreign files raise a clear error. The digest
detects damage (a truncated or bit-flipped file), not tampering: anyone can recompute it, so it is no
signature. What a file may make the loader do is bounded elsewhere: ``torch.load(..., weights_only=True)``
(no code runs) and the size limits on the configs stored in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ._errors import fail

__all__ = [
    "MAX_JSON_BYTES",
    "atomic_write",
    "check_output",
    "load_payload",
    "parse_json",
    "payload_digest",
    "read_json",
    "remove_stale_temps",
    "run_lock",
    "save_payload",
]

MAX_JSON_BYTES = 64 * 2**20
"""The largest JSON file (config, layout, experiment record) :func:`read_json` reads: 64 MiB."""
_MAX_INT_DIGITS = 30
"""JSON integers longer than this are refused (no count, size or seed of localscore needs more)."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read from ``/proc`` where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *, overwrite: bool = True,
                 where: str = "atomic_write", flag: str = "--out") -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    The temporary file lives in ``path``'s directory (so ``os.replace`` is a rename on one file
    system); it is flushed and fsynced before the rename and the directory is fsynced after. If
    ``write`` raises, the temporary file is removed and ``path`` is untouched. The file gets the
    permissions of the file it replaces, or those of a newly created file (``0o666`` less the umask),
    not the private ``0o600`` of a temporary file.

    With ``overwrite=False`` an existing ``path`` is never replaced: the temporary file is hard-linked to
    ``path`` (which fails if it exists, atomically, so of two concurrent writers one wins and the other gets
    a :class:`~localscore.LocalScoreError` naming ``flag`` and ``--overwrite``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise fail(where, f"{flag} {str(target)!r} exists; it is not overwritten without --overwrite.",
                           f"pass --overwrite to replace it, or choose another {flag} name.") from None
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


def check_output(path: str | os.PathLike[str], *, where: str, flag: str = "--out",
                 suffixes: Mapping[str, str] | None = None, folder: bool = False) -> Path:
    """Check, before any work, that :func:`atomic_write` will be able to write ``path``; return it as a Path.

    A file (``folder=False``) must not be an existing folder or special file (a device, a pipe), and its
    suffix must be one of ``suffixes`` (a mapping suffix -> what it holds, for the message), where given. A
    folder (``folder=True``) must not be an existing file. The nearest existing folder on the way (the
    parent, or the first ancestor that exists: missing folders are created when the file is written) must
    be a folder in which a file can be created; that is checked by creating and removing an empty probe
    file there, which also holds for root (for whom permission bits say little) and for ``/proc``.

    Raises:
        LocalScoreError: naming ``flag``, the problem and the fix.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> check_output(f"{d}/sub/x.npz", where="localscore sample", suffixes={".npz": "arrays"}).name
        'x.npz'
        >>> try:
        ...     check_output("x.txt", where="localscore sample", suffixes={".npz": "arrays"})
        ... except ValueError as e:
        ...     print(str(e).splitlines()[0])
        localscore sample: --out 'x.txt' ends in '.txt'; this command writes .npz (arrays).
    """
    p = Path(path)
    shown = str(p)
    if not os.fspath(path):
        raise fail(where, f"{flag} is empty.", f"pass a {'folder' if folder else 'file'} name to {flag}.")
    if folder:
        if p.exists() and not p.is_dir():
            raise fail(where, f"{flag} {shown!r} is a file, not a folder.",
                       f"pass a folder name to {flag} (it is created if missing).")
    else:
        if p.is_dir():
            example = p / ("result" + next(iter(suffixes)) if suffixes else "result")
            raise fail(where, f"{flag} {shown!r} is a folder; expected a file name.",
                       f"name a file in it, e.g. {flag} {example}")
        if suffixes is not None and p.suffix.lower() not in suffixes:
            kinds = " or ".join(f"{s} ({what})" for s, what in suffixes.items())
            got = f"ends in {p.suffix!r}" if p.suffix else "has no suffix"
            raise fail(where, f"{flag} {shown!r} {got}; this command writes {kinds}.",
                       f"use a name ending in {' or '.join(suffixes)}, e.g. {flag} "
                       f"{p.with_suffix(next(iter(suffixes)))}")
        if p.exists() and not p.is_file():
            raise fail(where, f"{flag} {shown!r} exists and is not a regular file (a device, pipe or socket).",
                       f"pass the name of a regular file to {flag}.")
    folder_path = p if folder else p.parent
    existing = folder_path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise fail(where, f"{flag} {shown!r} lies under {str(existing)!r}, which is a file, not a folder.",
                   f"choose a {'folder' if folder else 'file'} path whose parents are folders.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".localscore-probe.", dir=existing)
    except OSError as e:
        raise fail(where, f"{flag} {shown!r}: cannot create a file in {str(existing)!r} ({e.strerror or e}).",
                   f"choose a writable folder for {flag}.") from e
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return p


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(text.lstrip('-'))} digits (at most {_MAX_INT_DIGITS} are read)")
    return int(text)


def _json_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:40]!r} overflows a float")
    return v


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} (not a JSON number; write a finite number)")


def read_json(path: str | os.PathLike[str], *, where: str, what: str = "JSON file",
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file with every failure a :class:`~localscore.LocalScoreError` of one message.

    Refused with a message that names the file, the problem and the fix: a missing path, a folder or a
    device, a file over ``max_bytes``, bytes that are not UTF-8, invalid JSON, nesting too deep to parse,
    integers of more than 30 digits, numbers that overflow a float and ``NaN`` / ``Infinity``.

    Examples:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> with open(os.path.join(d, "a.json"), "w") as f:
        ...     _ = f.write('{"size": 1e400}')
        >>> try:
        ...     read_json(os.path.join(d, "a.json"), where="demo", what="layout")
        ... except ValueError as e:
        ...     print(str(e).splitlines()[0].split("a.json' ")[1])
        holds a value localscore does not read (the number '1e400' overflows a float).
    """
    p = Path(path)
    shown = str(p)
    fix = f"check the path of the {what}."
    try:
        st = p.stat()
    except OSError as e:
        raise fail(where, f"cannot read the {what} {shown!r} ({e.strerror or e}).", fix) from None
    if stat.S_ISDIR(st.st_mode):
        raise fail(where, f"the {what} {shown!r} is a folder, not a file.", f"pass the JSON file of the {what}.")
    if not stat.S_ISREG(st.st_mode):
        raise fail(where, f"the {what} {shown!r} is not a regular file (a device, pipe or socket).",
                   f"pass the JSON file of the {what}.")
    if st.st_size > max_bytes:
        raise fail(where, f"the {what} {shown!r} has {st.st_size:,} bytes, over the limit of {max_bytes:,}.",
                   f"split it into smaller files of at most {max_bytes // 2**20} MiB.")
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise fail(where, f"cannot read the {what} {shown!r} ({e.strerror or e}).", fix) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise fail(where, f"the {what} {shown!r} is not UTF-8 text (byte {data[e.start]:#04x} at line {line}, "
                   f"offset {e.start}).", "save the file as UTF-8 (JSON files are UTF-8).") from None
    return parse_json(text, where=where, what=f"the {what} {shown!r}")


def parse_json(text: str | bytes, *, where: str, what: str = "the JSON text") -> Any:
    """``json.loads`` with the bounds and messages of :func:`read_json` (``what`` names the text)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail(where, f"{what} is not UTF-8 (byte {text[e.start]:#04x} at offset {e.start}).",
                       "pass UTF-8 text.") from None
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as e:
        raise fail(where, f"{what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).",
                   "fix the JSON syntax (a JSON validator shows where).") from None
    except RecursionError:
        raise fail(where, f"{what} is nested too deeply to read.",
                   "check the file: localscore's JSON files nest a few levels at most.") from None
    except ValueError as e:
        raise fail(where, f"{what} holds a value localscore does not read ({e}).",
                   "use ordinary finite numbers (counts, sizes and seeds are small integers).") from None


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
_HELD: dict[str, list[Any]] = {}


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (``.NAME.XXXXXX.tmp``) that writes killed mid-way left in ``folder``.

    Call it only while holding :func:`run_lock` on ``folder`` (no other writer is active then). Returns the
    files removed.
    """
    removed: list[Path] = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for f in d.iterdir():
        if _TEMP.match(f.name) and f.is_file():
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], *, where: str, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on a run folder (``folder/.lock``, ``fcntl.flock``, with the pid in it).

    A second process that asks for the lock while it is held gets a :class:`~localscore.LocalScoreError`
    naming the holder's pid, at once (no waiting). The kernel releases the lock when its process dies, so a
    killed run never blocks the next one. Reentrant within a process. Where ``fcntl`` is missing (Windows)
    the lock is not taken.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    key = str(d.resolve())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield d
        finally:
            held[1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield d
        return
    lock = d / ".lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise fail(where, f"the run folder {str(d)!r} is in use by another localscore process (pid {pid}).",
                       f"wait for it to finish (or stop it), or use another {flag} folder.") from None
        try:  # the file we locked must still be the one at the path (a finishing holder removes it)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        yield d
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def payload_digest(obj: Any) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and the repr of the other leaves."""
    h = hashlib.sha256()
    for name, t in _tensors(obj):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    def skeleton(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return "<t>"
        if isinstance(o, dict):
            return {str(k): skeleton(v) for k, v in sorted(o.items(), key=lambda kv: str(kv[0]))}
        if isinstance(o, (list, tuple)):
            return [skeleton(v) for v in o]
        return o

    h.update(repr(skeleton(obj)).encode())
    return h.hexdigest()


def save_payload(path: str | os.PathLike[str], payload: dict[str, Any], *, kind: str, version: int) -> Path:
    """Save ``payload`` atomically with ``torch.save``, tagged ``kind``/``version`` and digested."""
    record = {"format": kind, "version": version, "digest": payload_digest(payload), "payload": payload}
    buf = io.BytesIO()
    torch.save(record, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_payload(path: str | os.PathLike[str], *, kind: str, version: int, where: str,
                 map_location: Any = "cpu") -> dict[str, Any]:
    """Load a file written by :func:`save_payload` with ``weights_only=True`` and check it.

    Raises:
        LocalScoreError: if the file is missing, unreadable, truncated or corrupt, of another
            format, or of a newer version.
    """
    p = Path(path)
    if not p.is_file():
        raise fail(where, f"no file at {str(p)!r}.", "check the path (and the run's output directory).")
    try:
        record = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors, ...
        raise fail(where, f"{str(p)!r} is not a readable {kind} file: it is truncated, corrupt, or not a "
                   f"torch file ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}).",
                   "use another checkpoint (the previous one is never overwritten by a failed write), "
                   "or recreate the file.") from e
    if not isinstance(record, dict) or record.get("format") != kind or "payload" not in record:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise fail(where, f"{str(p)!r} is not a {kind} file (its format tag is {got!r}).",
                   f"pass a file written by localscore as a {kind}.")
    ver = record.get("version")
    if not isinstance(ver, int) or ver > version:
        raise fail(where, f"{str(p)!r} has {kind} version {ver!r}; this localscore reads up to {version}.",
                   "upgrade localscore, or recreate the file with this version.")
    payload: dict[str, Any] = record["payload"]
    if payload_digest(payload) != record.get("digest"):
        raise fail(where, f"{str(p)!r} is corrupt: its contents do not match the SHA-256 digest stored in it.",
                   "use another checkpoint or recreate the file.")
    return payload

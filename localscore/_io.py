"""Atomic file writes, output path checks and safe ``torch.load`` (private; shared by data, train, evaluate, cli).

A file is written to a temporary file in the destination's directory, flushed and fsynced, moved
over the destination with ``os.replace`` (atomic on POSIX and Windows) and the directory is
fsynced, so a crash leaves either the old file or the new one, never a mix. Payloads saved with
:func:`save_payload` carry a format tag, a version and a SHA-256 digest of their tensors, which
:func:`load_payload` checks, so truncated, corrupt and foreign files raise a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ._errors import fail

__all__ = ["atomic_write", "check_output", "load_payload", "payload_digest", "save_payload"]


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    The temporary file lives in ``path``'s directory (so ``os.replace`` is a rename on one file
    system); it is flushed and fsynced before the rename and the directory is fsynced after. If
    ``write`` raises, the temporary file is removed and ``path`` is untouched. The file gets the
    permissions of the file it replaces, or those of a newly created file (``0o666`` less the umask),
    not the private ``0o600`` of a temporary file.
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
        os.replace(tmp, target)
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

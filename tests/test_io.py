"""Private helpers of ``localscore._io``: the atomic writer every checkpoint and result file goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localscore._io import atomic_write


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        new = atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x"))
        assert new.stat().st_mode & 0o777 == 0o644  # 0o666 less the umask, not mkstemp's 0o600
        os.umask(0o077)
        atomic_write(tmp_path / "private.bin", lambda f: f.write(b"x"))
        assert (tmp_path / "private.bin").stat().st_mode & 0o777 == 0o600
        (tmp_path / "new.bin").chmod(0o640)
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"y"))  # replacing keeps the file's mode
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "new.bin").read_bytes() == b"y"
    finally:
        os.umask(old)

"""Private key files are 0600 from the moment they hold a key, and never written through a link.

Found by a read-only review: `--force` opened the existing file with O_TRUNC, so a file left with
mode 0644 (a keys folder restored from a backup, or copied) kept that mode while the new private
key was written into it, until a chmod after; and a symbolic link in its place had the key written
to where it pointed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import Conflict
from exchange.keystore import NodeKeyFiles, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_replaced_with_force_is_never_readable_by_others_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "signing.key"
    old.write_bytes(b"old key\n")
    old.chmod(0o644)
    modes: list[int] = []
    real_fdopen = os.fdopen

    def fdopen_checked(fd: int, *args: Any, **kwargs: Any) -> Any:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))  # before any byte is written
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen_checked)
    write_private(old, b"new key\n", force=True)
    monkeypatch.undo()
    # The bytes go into a file that others cannot read: before, 0644 until the chmod after.
    assert modes and all(m & 0o077 == 0 for m in modes), [oct(m) for m in modes]
    assert old.read_bytes() == b"new key\n" and mode(old) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]  # no temporary file left


def test_a_key_is_not_written_through_a_symbolic_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not a key\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "signing.key").symlink_to(elsewhere)
    with pytest.raises(Conflict):  # without --force: it exists, as a link
        write_private(keys / "signing.key", b"new key\n")
    write_private(keys / "signing.key", b"new key\n", force=True)
    assert elsewhere.read_bytes() == b"not a key\n"  # before: the key was written here
    assert not (keys / "signing.key").is_symlink() and (keys / "signing.key").read_bytes() == b"new key\n"
    assert mode(keys / "signing.key") == 0o600


def test_generating_keys_again_with_force_leaves_every_private_file_0600(tmp_path: Path) -> None:
    files = NodeKeyFiles(tmp_path / "keys")
    files.generate("nl-customs")
    for name in ("signing.key", "encryption.key", "tls.key"):
        (tmp_path / "keys" / name).chmod(0o644)
    with pytest.raises(Conflict):
        files.generate("nl-customs")
    files.generate("nl-customs", force=True)
    for name in ("signing.key", "encryption.key", "tls.key"):
        assert mode(tmp_path / "keys" / name) == 0o600, name

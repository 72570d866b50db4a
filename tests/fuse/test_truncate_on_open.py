"""open(O_TRUNC) on an existing file: the kernel's atomic O_TRUNC passes the flag to open
and sends no setattr, so the open itself must cut the file and move mtime and ctime."""

from __future__ import annotations

import os
import subprocess
import time

from tests.fuse.helpers import Volume


def test_shell_redirection_over_a_longer_file(file_volume: Volume) -> None:
    volume = file_volume
    a, b = volume.mount().path, volume.mount().path
    (a / "f").write_bytes(b"hello world\n")
    subprocess.run(["sh", "-c", f"echo hi > {a / 'f'}"], check=True)
    assert (a / "f").read_bytes() == b"hi\n"
    assert (b / "f").read_bytes() == b"hi\n", "the other mount reads the old tail"
    assert (b / "f").stat().st_size == 3


def test_os_open_o_trunc_sets_size_mtime_and_ctime(file_volume: Volume) -> None:
    volume = file_volume
    a, b = volume.mount().path, volume.mount().path
    path = a / "data"
    path.write_bytes(os.urandom(200_000))
    before = path.stat()
    time.sleep(0.05)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        after = os.fstat(fd)
        assert after.st_size == 0
        assert after.st_mtime_ns > before.st_mtime_ns
        assert after.st_ctime_ns > before.st_ctime_ns
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"new"
    time.sleep(1.1)  # the second mount's attribute cache
    assert (b / "data").read_bytes() == b"new"
    seen = (b / "data").stat()
    assert seen.st_mtime_ns > before.st_mtime_ns and seen.st_ctime_ns > before.st_ctime_ns


def test_o_trunc_of_an_empty_file_still_moves_the_times(file_volume: Volume) -> None:
    volume = file_volume
    mnt = volume.mount().path
    path = mnt / "empty"
    path.touch()
    before = path.stat()
    time.sleep(0.05)
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    after = path.stat()
    assert after.st_size == 0
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns


def test_o_creat_o_trunc_of_an_existing_file_and_of_a_new_one(file_volume: Volume) -> None:
    volume = file_volume
    a, b = volume.mount().path, volume.mount().path
    (a / "old").write_bytes(b"x" * 10_000)
    fd = os.open(a / "old", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"short")
    os.close(fd)
    fd = os.open(a / "new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"fresh")
    os.close(fd)
    assert (b / "old").read_bytes() == b"short"
    assert (b / "new").read_bytes() == b"fresh"


def test_o_trunc_while_another_handle_of_this_client_has_buffered_writes(file_volume: Volume) -> None:
    volume = file_volume
    mnt = volume.mount().path
    path = mnt / "f"
    with open(path, "wb") as writer:
        writer.write(b"a" * 100_000)
        writer.flush()  # into the client's buffers, not committed yet
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        assert path.stat().st_size == 0
    # The first handle's later close adds nothing that was written before the cut.
    assert path.stat().st_size == 0

"""Writes never follow symbolic links, never leave partial files, and clean what a killed writer left."""

from __future__ import annotations

import os

import pytest

from rwkv_deploy.fileio import UnsafePathError, create_new_file, open_regular_file, write_bytes_atomically


def test_an_atomic_write_refuses_a_link_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    os.symlink(victim, tmp_path / "out.json")
    with pytest.raises(UnsafePathError, match="out.json: is a symbolic link"):
        write_bytes_atomically(tmp_path / "out.json", b"{}")
    assert victim.read_text() == "mine" and os.path.islink(tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim.txt"]


def test_an_atomic_write_refuses_to_replace_a_directory_or_device(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        write_bytes_atomically(tmp_path / "folder", b"x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        write_bytes_atomically(tmp_path / "fifo", b"x")


def test_temporary_files_of_a_dead_writer_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / ".out.json.tmp-999999999-abc"  # no such pid
    dead.write_text("half")
    live = tmp_path / f".out.json.tmp-{os.getpid()}-abc"  # a running writer's: kept
    live.write_text("busy")
    write_bytes_atomically(tmp_path / "out.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.json"]


def test_create_new_file_never_overwrites_or_follows(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(UnsafePathError):
        create_new_file(tmp_path / "link", b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_reading_package_files_refuses_links_and_special_files(tmp_path):
    (tmp_path / "real").write_bytes(b"data")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with open_regular_file(tmp_path / "real") as f:
        assert f.read() == b"data"
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_regular_file(tmp_path / "link")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_regular_file(tmp_path / "fifo")
    with open_regular_file(tmp_path / "link", follow_links=True) as f:  # a path the user typed may be a link
        assert f.read() == b"data"

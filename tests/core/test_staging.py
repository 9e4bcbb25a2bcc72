"""Publishing a folder: all or nothing, one writer per target, leftovers of killed writers cleaned."""

from __future__ import annotations

import os

import pytest

from rwkv_deploy.staging import MARKER, TargetError, clean_leftovers, staged_directory, target_lock


def test_a_published_folder_appears_whole_and_without_its_marker(tmp_path):
    with staged_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder, no lock file


def test_an_exception_publishes_nothing_and_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_without_replace_a_target_that_appeared_meanwhile_is_kept(tmp_path):
    with pytest.raises(TargetError, match="appeared while it was being written"):
        with staged_directory(tmp_path / "out") as tmp:
            (tmp / "new.txt").write_text("new")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs.txt"]


def test_a_second_writer_is_refused_while_the_first_holds_the_target(tmp_path):
    with target_lock(tmp_path / "out"):
        with pytest.raises(TargetError, match=rf"another rwkv-deploy run \(pid {os.getpid()}\)"):
            with staged_directory(tmp_path / "out"):
                pass
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_dead_writer_are_recognised_and_only_they_are_removed(tmp_path):
    dead = tmp_path / ".out.tmp-999999999-x"
    dead.mkdir()
    (dead / MARKER).write_text("{}")
    unmarked = tmp_path / ".out.tmp-999999998-y"  # same pattern, no owner marker: not ours to delete
    unmarked.mkdir()
    alive = tmp_path / f".out.tmp-{os.getpid()}-z"  # a running writer
    alive.mkdir()
    (alive / MARKER).write_text("{}")
    displaced = tmp_path / ".out.old-999999997"  # killed between moving the old output aside and the new one in
    displaced.mkdir()
    (displaced / "manifest.json").write_text("{}")
    clean_leftovers(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unmarked.name, alive.name, "out"])
    assert (tmp_path / "out" / "manifest.json").is_file()  # the displaced output is put back, not lost

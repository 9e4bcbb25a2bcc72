"""Publishing a folder: all or nothing, one writer per target, leftovers of killed writers cleaned."""

from __future__ import annotations

import json
import os

import pytest

from rwkv_deploy.staging import MARKER, OWNER_SUFFIX, TargetError, clean_leftovers, staged_directory, target_lock


def record(pid: int, target: str = "out") -> str:
    """What a writer of `target` with that pid writes into its markers."""
    return json.dumps({"pid": pid, "uid": os.getuid(), "target": target})


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
    (dead / MARKER).write_text(record(999999999))
    unmarked = tmp_path / ".out.tmp-999999998-y"  # same pattern, no owner marker: not ours to delete
    unmarked.mkdir()
    alive = tmp_path / f".out.tmp-{os.getpid()}-z"  # a running writer
    alive.mkdir()
    (alive / MARKER).write_text(record(os.getpid()))
    displaced = tmp_path / ".out.old-999999997"  # killed between moving the old output aside and the new one in
    displaced.mkdir()
    (displaced / "manifest.json").write_text("{}")
    (tmp_path / (displaced.name + OWNER_SUFFIX)).write_text(record(999999997))
    clean_leftovers(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unmarked.name, alive.name, "out"])
    assert (tmp_path / "out" / "manifest.json").is_file()  # the displaced output is put back, not lost


@pytest.mark.parametrize("owner", [None, "{}", record(999999996), record(999999997, target="other"), "not json"])
def test_a_users_folder_that_only_looks_like_a_displaced_output_is_never_touched(tmp_path, owner):
    """`.out.old-<dead pid>` without an owner file that this writer of `out` wrote for that very pid is the
    user's: it is neither deleted (target present) nor moved into the target's place (target absent)."""
    theirs = tmp_path / ".out.old-999999997"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("mine")
    if owner is not None:
        (tmp_path / (theirs.name + OWNER_SUFFIX)).write_text(owner)
    clean_leftovers(tmp_path / "out")  # target absent
    assert (theirs / "precious.txt").read_text() == "mine" and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    clean_leftovers(tmp_path / "out")  # target present
    assert (theirs / "precious.txt").read_text() == "mine"
    marked = tmp_path / ".out.tmp-999999995-q"  # and a staging look-alike whose marker is not its writer's
    marked.mkdir()
    (marked / MARKER).write_text(record(999999994))
    clean_leftovers(tmp_path / "out")
    assert marked.is_dir()


def test_replacing_leaves_no_owner_file_and_a_stale_one_is_cleaned(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out) as tmp:
        (tmp / "a.txt").write_text("a")
    with staged_directory(out, replace=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    stale = tmp_path / f".out.old-999999993{OWNER_SUFFIX}"  # killed after writing it, before the move
    stale.write_text(record(999999993))
    clean_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from rwkv_deploy.staging import staged_directory
with staged_directory(Path(sys.argv[1]), replace=True) as tmp:
    (tmp / "half.txt").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_sigkilled_writer_leaves_is_cleaned_by_the_next_run(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    with staged_directory(out) as tmp:
        (tmp / "a.txt").write_text("a")
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)])
    assert done.returncode == -9
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]) == 1  # its staging folder
    with staged_directory(out, replace=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in out.iterdir()] == ["b.txt"]

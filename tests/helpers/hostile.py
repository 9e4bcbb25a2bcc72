"""A corpus of hostile and careless inputs for the `rwkv-deploy` command (issue 14), built at test time.

Each `Case` makes its inputs in a fresh folder `root` (copies of one small real package, crafted manifests,
archives, checkpoints, links to "victim" files under `root/outside/`) and names the command to run. `judge`
decides how the command behaved, in the issue's terms:

- clean: the expected exit code and exactly one line on stderr (`error: ...`) containing the expected text
  (for `verify`, the problem on stdout and FAILED); for expected successes, exit 0;
- traceback: a Python traceback escaped;
- written: anything under `root` changed other than the paths the case allows (a snapshot of the whole
  folder before and after: files, links, sizes, hashes), i.e. something was written outside its place,
  left behind, or lost;
- code: the marker file a crafted payload would create exists;
- accepted: the command succeeded (exit 0) where it had to refuse (an unverified graph ran, a bad value used).

The same cases run in-process in the test suite (tests/cli/test_hostile_corpus.py) and as subprocesses
against any checkout in `scripts/hostile_census.py` (the before/after counts of issue 14).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "PWNED"  # what a code-execution payload would create under root


@dataclass(frozen=True)
class Material:
    """Shared, read-only inputs: a real small package (RWKV-7, byte tokenizer, prefill graph), its checkpoint
    and its archive. Cases copy what they change."""

    package: Path
    checkpoint: Path
    archive: Path


@dataclass(frozen=True)
class Case:
    name: str
    klass: str  # dangerous | memory | nonfinite | traceback | opset | verify | prompt | interrupt | code
    build: Callable[[Path, Material], list[str]]  # makes the inputs under root, returns the CLI arguments
    exit_code: int  # 0: must succeed
    message: str = ""  # text the one error line (or verify's problem line) must contain
    allowed: tuple[str, ...] = ()  # paths under root (prefixes) that may change
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    subprocess_only: bool = False  # needs its own process (rlimits, signals)
    cwd: str = ""  # relative to root
    on_stdout: bool = False  # `verify`: the problem is a line on stdout, then FAILED
    file_size_limit: int | None = None  # RLIMIT_FSIZE for the run: writes beyond it fail like a full disk
    census_only: bool = False  # too slow for CI (a whole export in a subprocess); scripts/hostile_census.py runs it


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    traceback: bool


@dataclass(frozen=True)
class Verdict:
    clean: bool
    traceback: bool
    written: list[str]
    code: bool
    accepted: bool

    @property
    def ok(self) -> bool:
        return self.clean and not self.traceback and not self.written and not self.code and not self.accepted


# -- running the command -------------------------------------------------------------------------------------------


def run_subprocess(case: Case, root: Path, argv: list[str], python: str, pythonpath: str | None = None,
                   memory_limit: int | None = 8 << 30, timeout: float = 600) -> Outcome:
    """`python -m rwkv_deploy.cli.main ARGV` in its own process (limits applied there only)."""
    import resource
    import signal
    import subprocess

    env = dict(os.environ, **case.env)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.pop("COLUMNS", None)

    def limits() -> None:
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if case.file_size_limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, case.file_size_limit))

    out = subprocess.run([python, "-m", "rwkv_deploy.cli.main", *argv], input=case.stdin or b"", capture_output=True,
                         cwd=root / case.cwd, env=env, preexec_fn=limits, timeout=timeout)
    stderr = out.stderr.decode(errors="replace")
    return Outcome(out.returncode, out.stdout.decode(errors="replace"), stderr,
                   "Traceback (most recent call last)" in stderr)


# -- snapshots ------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root, links not followed: kind, size, content hash or link target."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir",)
            elif stat.S_ISREG(info.st_mode):
                entries[rel] = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[rel] = ("other", stat.S_IFMT(info.st_mode))
    return entries


def changes(before: dict[str, tuple], after: dict[str, tuple], allowed: tuple[str, ...]) -> list[str]:
    keys = set(before) | set(after)
    changed = sorted(k for k in keys if before.get(k) != after.get(k))
    return [k for k in changed if not any(k == a or k.startswith(a.rstrip("/") + "/") for a in allowed)]


def judge(case: Case, outcome: Outcome, before: dict, after: dict, root: Path) -> Verdict:
    written = changes(before, after, case.allowed + (MARKER,))
    code = (root / MARKER).exists()
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if case.exit_code == 0:
        clean = outcome.exit_code == 0
    elif case.on_stdout:
        clean = (outcome.exit_code == case.exit_code and "FAILED" in outcome.stdout
                 and any(case.message in line for line in outcome.stdout.splitlines()))
    else:
        clean = (outcome.exit_code == case.exit_code and len(lines) == 1 and lines[0].startswith("error: ")
                 and case.message in lines[0])
    accepted = case.exit_code != 0 and outcome.exit_code == 0
    return Verdict(clean and not outcome.traceback, outcome.traceback, written, code, accepted)


# -- building blocks --------------------------------------------------------------------------------------------


def copy_package(root: Path, m: Material, name: str = "pkg") -> Path:
    return Path(shutil.copytree(m.package, root / name))


def manifest_of(pkg: Path) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


def write_manifest(pkg: Path, data: object) -> None:
    (pkg / "manifest.json").write_text(json.dumps(data, indent=1))


def edit(pkg: Path, change: Callable[[dict], None]) -> None:
    data = manifest_of(pkg)
    change(data)
    write_manifest(pkg, data)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relist(pkg: Path, *names: str) -> None:
    """Record the current hashes of `names` (so only the intended problem remains)."""
    edit(pkg, lambda d: d["files"].update({n: sha256(pkg / n) for n in names}))


def rename_state(pkg: Path, old: str, new: str) -> None:
    """Rename state `old` to `new` everywhere (the manifest and every graph's inputs, outputs and their uses),
    rehashing the graphs: a consistent package in which only the name can be wrong."""
    import onnx

    data = manifest_of(pkg)
    renames = {f"state_in.{old}": f"state_in.{new}", f"state_out.{old}": f"state_out.{new}"}
    graphs = list(dict.fromkeys(g["path"] for g in data["graphs"].values()))
    for graph in graphs:
        model = onnx.load(str(pkg / graph), load_external_data=False)  # external weights stay where they are
        for value in [*model.graph.input, *model.graph.output]:
            value.name = renames.get(value.name, value.name)
        for node in model.graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        onnx.save(model, str(pkg / graph))
    for entry in data["state"]:
        if entry["name"] == old:
            entry.update(name=new, input=f"state_in.{new}", output=f"state_out.{new}")
    write_manifest(pkg, data)
    relist(pkg, *graphs)


def step_graph(pkg: Path) -> str:
    return manifest_of(pkg)["graphs"]["step"]["path"]


def outside(root: Path, name: str = "victim.txt", text: str = "the user's own file\n") -> Path:
    folder = root / "outside"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def generate(pkg: Path | str, *extra: str) -> list[str]:
    return ["generate", str(pkg), "--prompt", "Hi", "--max-tokens", "3", "--greedy", *extra]


def rewrite_zip(source: Path, target: Path, change: Callable[[zipfile.ZipInfo, bytes], tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            new_info, data = change(info, zin.read(info))
            zout.writestr(new_info, data)
    return target


def patch_central_flags(path: Path, member: str, flag_or: int = 0, method: int | None = None) -> None:
    """Set general-purpose flag bits / the compression method of `member` in both headers, in place."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            length_at = 26 if signature == b"PK\x03\x04" else 28
            length = int.from_bytes(data[at + length_at: at + length_at + 2], "little")
            if data[at + name_at: at + name_at + length] == name:
                flags = int.from_bytes(data[at + flag_at: at + flag_at + 2], "little") | flag_or
                data[at + flag_at: at + flag_at + 2] = flags.to_bytes(2, "little")
                if method is not None:
                    data[at + method_at: at + method_at + 2] = method.to_bytes(2, "little")
            start = at + 4
    path.write_bytes(bytes(data))


def npy_bytes(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> bytes:
    """A .npy file whose header declares `shape` (the data may be much shorter: a forged header)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


class _Payload:
    """Unpickling this would create the marker file: a checkpoint must never execute it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bomb(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"emb.weight": _Payload(marker)}, protocol=2))
    return path


def zip_pickle_bomb(path: Path, marker: Path) -> Path:
    """A torch-style zip checkpoint whose data.pkl runs the payload."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"emb.weight": _Payload(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    return path


def zip_with(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def npz_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()

"""Make the repository root importable so tests can `import tests.helpers...` under --import-mode=importlib,
the session-wide fixtures (small exported packages that tests only read, one real Triton server), and the
guard of the fast tier: a test not marked `slow` that exports at run time fails (tests.helpers.fast_tier)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.helpers.fast_tier import exports_refused  # noqa: E402  (needs the root on sys.path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Session fixtures are made in the setup of the first test that asks: it is guarded like the test."""
    with exports_refused(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with exports_refused(item):
        yield


@pytest.fixture(scope="session")
def shared_package(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`shared_package("7", "fp16", prefill=True)`: a small random package exported once per test session
    (tests.helpers.small_packages.export_small). Read it, never change it: copy it first (shutil.copytree)."""
    from tests.helpers.across_workers import shared_root
    from tests.helpers.small_packages import export_small

    root = shared_root(tmp_path_factory, "shared-packages")
    cache: dict[tuple, Path] = {}

    def get(version: str, precision: str = "fp32", seed: int = 0, **options) -> Path:
        key = (version, precision, seed, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = export_small(root, version, precision, seed, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def bundled_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled RWKV-7 byte-level model exported once per session, fp32 (read it; copy it to change it)."""
    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from rwkv_deploy.models.bundled import bundled_checkpoint
    from tests.helpers.across_workers import made_once, shared_root

    out = shared_root(tmp_path_factory, "bundled") / "tiny"
    return made_once(out, lambda: export_package(bundled_checkpoint(), out, ExportOptions()))


@pytest.fixture(scope="session")
def small_packages(shared_package, tmp_path_factory: pytest.TempPathFactory):
    """kind -> a small package: "4" ... "7" (seed 1), "6-tuned" (a state-tuned RWKV-6), "7-external" (an RWKV-7,
    seed 2, whose weights are ONNX external data); each exported once per session, on first use."""
    from tests.helpers.across_workers import shared_root
    from tests.helpers.small_packages import SmallPackages

    return SmallPackages(shared_package, shared_root(tmp_path_factory, "small-packages"))


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory):
    """One real Triton server (scripts/triton_server.sh) for the whole session, on free ports, in explicit
    model-control mode (tests load their models with `serve`); stopped with SIGTERM at the end, which must
    stop it cleanly."""
    from tests.helpers.triton_server import skip_reason, start_server

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("triton-server")
    (root / "repository").mkdir()
    server = start_server(root / "repository", root / "server.log", "--model-control-mode=explicit")
    yield server
    status = server.stop()
    assert status == 0, f"triton_server.sh exited {status} on SIGTERM:\n{server.log_tail()}"

"""Fetch PEFT's test files (not in the wheel) from the sdist of the installed PEFT version.

``pip download --no-deps --no-binary :all: peft==<version>`` into ``build/peft-tests/``, once;
the ``tests/`` folder is unpacked there and imported as the package ``peft_sdist_tests`` (its
modules import each other relatively: ``from .testing_common import ...``), so nothing is put
on ``sys.path``. ``SORTH_PEFT_SDIST=/path/to/peft-X.tar.gz`` uses a local sdist instead (offline).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["BUILD_DIR", "PACKAGE", "SdistUnavailableError", "load_peft_tests"]

BUILD_DIR = Path(__file__).resolve().parents[2] / "build" / "peft-tests"
PACKAGE = "peft_sdist_tests"


class SdistUnavailableError(RuntimeError):
    """pip could not fetch the PEFT sdist (no registry access, no such version)."""


def _download(version: str, dest: Path) -> Path:
    local = os.environ.get("SORTH_PEFT_SDIST")
    if local:
        return Path(local)
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"peft-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-q", f"peft=={version}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SdistUnavailableError(f"`{' '.join(cmd)}` failed: {err}") from err
    found = sorted(dest.glob(f"peft-{version}.tar.gz"))
    if proc.returncode or not found:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise SdistUnavailableError(
            f"pip could not fetch the peft=={version} sdist ({last[-1] if last else 'no output'})"
        )
    return found[0]


def _unpack(archive: Path, version: str) -> Path:
    """``build/peft-tests/peft-<version>/tests`` (unpacked atomically: a temp dir, then rename)."""
    target = BUILD_DIR / f"peft-{version}"
    tests = target / "tests"
    if (tests / "__init__.py").is_file():
        return tests
    tmp = Path(tempfile.mkdtemp(prefix=f".peft-{version}-", dir=BUILD_DIR))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"peft-{version}/tests/")]
            tar.extractall(tmp, members=members, filter="data")
        (tmp / f"peft-{version}" / "tests" / "__init__.py").touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp / f"peft-{version}", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tests


def load_peft_tests(module: str = "test_custom_models") -> ModuleType:
    """Import ``tests/<module>.py`` of the installed PEFT version's sdist.

    Raises:
        SdistUnavailableError: pip could not fetch the sdist.
    """
    version = importlib.metadata.version("peft")
    if PACKAGE not in sys.modules:
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        tests = _unpack(_download(version, BUILD_DIR), version)
        spec = importlib.util.spec_from_file_location(
            PACKAGE, tests / "__init__.py", submodule_search_locations=[str(tests)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{module}")

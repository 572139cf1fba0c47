"""Pyro5's source distribution (its tests and examples), fetched from the package index at test time.

Never committed: `pip download --no-deps --no-binary :all: Pyro5==<installed version>` into a cache
directory (MESHRPC_TEST_CACHE, default ~/.cache/meshrpc-tests), unpacked once. .ci/run fetches it
before the suite runs and sets MESHRPC_TEST_REQUIRE_PYRO5_SDIST=1, so CI fails instead of skipping when
it cannot be had.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

FETCH_TIMEOUT = 120  # seconds for pip to download the sdist


def cache_dir() -> Path:
    return Path(os.environ.get("MESHRPC_TEST_CACHE") or Path.home() / ".cache" / "meshrpc-tests")


def pyro5_version() -> str:
    return importlib.metadata.version("Pyro5")


def fetch() -> tuple[Path | None, str]:
    """(the unpacked sdist directory, "") or (None, why it is not available)."""
    version = pyro5_version()
    root = cache_dir()
    unpacked = root / f"pyro5-{version}"
    if (unpacked / "tests").is_dir():
        return unpacked, ""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"pyro5-{version}.tar.gz"
    if not archive.exists():
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                                   "--no-deps", "--no-binary", ":all:", f"Pyro5=={version}", "-d", str(root)],
                                  capture_output=True, text=True, timeout=FETCH_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"pip download of the Pyro5 {version} sdist failed: {exc}"
        candidates = sorted(root.glob(f"[Pp]yro5-{version}.tar.gz"))
        if done.returncode != 0 or not candidates:
            return None, f"pip download of the Pyro5 {version} sdist failed: {done.stderr.strip()[-300:]}"
        archive = candidates[0]
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    found = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == f"pyro5-{version}"]
    if not found or not (found[0] / "tests").is_dir():
        return None, f"the Pyro5 {version} sdist has no tests/ directory"
    return found[0], ""


def required() -> bool:
    """CI must have the sdist: a missing one is a failure there, a skip elsewhere."""
    return os.environ.get("MESHRPC_TEST_REQUIRE_PYRO5_SDIST", "") not in ("", "0")


if __name__ == "__main__":  # .ci/run: fetch it now
    path, why = fetch()
    print(path if path else why, file=sys.stdout if path else sys.stderr)
    sys.exit(0 if path else 1)

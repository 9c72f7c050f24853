"""The install reproduces: `make setup` installs exactly `requirements.lock` (every transitive
dependency pinned with its hashes), and pip refuses a dependency the lock does not pin."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocks(text: str) -> dict[str, str]:
    """The lock's entries by canonical name: each entry is `name==version` and its hash lines."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    out = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", entry)
        if match:
            out[_canonical(match.group(1))] = entry.strip()
    return out


def _pins() -> dict[str, str]:
    return {
        name: re.match(r"[^=\s]+==(\S+)", block).group(1)
        for name, block in _blocks(LOCK.read_text()).items()
    }


def test_every_lock_entry_is_pinned_with_a_hash():
    blocks = _blocks(LOCK.read_text())
    assert len(blocks) > 100  # the whole transitive closure, not the direct dependencies
    unhashed = [name for name, block in blocks.items() if "--hash=sha256:" not in block]
    assert unhashed == []
    for direct in ("torch", "pytorch-lightning", "mlflow", "dvc", "prefect", "setuptools"):
        assert direct in blocks, direct


def test_the_environment_is_exactly_the_lock():
    """What the tests run in was installed from the lock: every installed distribution but the
    project itself (and pip) is pinned there at the installed version, and nothing pinned is
    missing."""
    pins = _pins()
    installed = {
        _canonical(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if _canonical(dist.metadata["Name"]) not in {"siamese", "pip"}
    }
    not_locked = {name: v for name, v in installed.items() if pins.get(name) != v}
    assert not_locked == {}, f"installed, not pinned at this version in the lock: {not_locked}"
    missing = sorted(set(pins) - set(installed))
    assert missing == [], f"pinned in requirements.lock but not installed: {missing}"
    pip_pin = re.search(r"^pip==(\S+)", (ROOT / "requirements-pip.lock").read_text(), re.M)
    assert metadata.version("pip") == pip_pin.group(1)


def _dry_run(lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--require-hashes", "--disable-pip-version-check", "-r", str(lock)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_dependency_the_lock_does_not_pin_is_refused(tmp_path):
    """The real lock's entries for alembic and what it needs install; without the entry of one
    of its dependencies (mako), pip refuses in hash-checking mode, naming it. `make setup` runs
    in this mode, so a lock that misses a dependency cannot install silently."""
    blocks = _blocks(LOCK.read_text())
    closure = ["alembic", "mako", "markupsafe", "sqlalchemy", "greenlet", "typing-extensions"]
    whole = tmp_path / "whole.lock"
    whole.write_text("\n".join(blocks[name] for name in closure) + "\n")
    result = _dry_run(whole)
    if result.returncode != 0 and "alembic" not in result.stdout.lower():
        pytest.skip(f"the package index is not reachable: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Would install" in result.stdout and "Mako-" in result.stdout.replace("mako-", "Mako-")

    partial = tmp_path / "partial.lock"
    partial.write_text("\n".join(blocks[name] for name in closure if name != "mako") + "\n")
    result = _dry_run(partial)
    assert result.returncode != 0
    assert "--require-hashes mode" in result.stderr, result.stderr[-2000:]
    assert "Mako" in result.stderr, result.stderr[-2000:]

"""The layer rule is part of the code: the import contracts in pyproject.toml hold (and the check
really fails when a module imports from a layer above its own)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{root / 'src'}:{root}", "PATH": str(exe.parent)},
    )


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copytree(ROOT / "pipelines", copy / "pipelines")
    shutil.copy(ROOT / "pyproject.toml", copy)
    losses = copy / "src" / "siamese" / "losses" / "__init__.py"
    losses.write_text(losses.read_text() + "\nimport siamese.registry.tracking  # upward\n")
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "siamese.losses -> siamese.registry.tracking" in result.stdout

"""The one-way layers contract (pyproject.toml's [tool.importlinter]) holds on the tree,
and fails on a copy of it where a low layer imports a high one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "skills", "agents", "workers", "kernels", "evals")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, ahead of the installed tree
    return subprocess.run(
        [str(exe), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path):
    tree = _copy(tmp_path)
    clean = _lint_imports(tree)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 broken" in clean.stdout

    # a worker that reaches up into the CLI, and the foundation into the facade
    (tree / "workers" / "upward.py").write_text("from orchestrator.cli import app\n")
    (tree / "orchestrator" / "types_helper.py").write_text("import orchestrator.conclave\n")
    text = (tree / "orchestrator" / "types.py").read_text()
    (tree / "orchestrator" / "types.py").write_text(
        text + "\nfrom orchestrator import types_helper\n"
    )
    broken = _lint_imports(tree)
    assert broken.returncode != 0
    assert "workers is not allowed to import orchestrator.cli" in broken.stdout
    assert "orchestrator.types is not allowed to import orchestrator.conclave" in broken.stdout

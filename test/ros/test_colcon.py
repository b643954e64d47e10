"""CI check: `colcon build` in a temporary workspace and the installed `localizer` executable."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_colcon_build_and_installed_localizer_exit_cleanly():
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "colcon").exists() and shutil.which("colcon") is None:
        pytest.fail(f"colcon not found in {venv}/bin or on PATH (it is in requirements.txt)")
    env = dict(os.environ, VENV=str(venv))
    result = subprocess.run(["bash", str(ROOT / "test" / "colcon_check.sh")], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exited cleanly on SIGINT" in result.stdout and "exited cleanly on SIGTERM" in result.stdout
    assert result.stdout.rstrip().endswith("colcon_check: OK")

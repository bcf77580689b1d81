"""The layers hold: import-linter's contracts in pyproject.toml (blocks -> tasks/core -> tasks/<runbook> -> flows)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_tasks_holds_only_packages():
    loose = [p.name for p in (ROOT / "tasks").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules at the top of tasks/: {loose}; move each into its runbook's package or tasks/core"

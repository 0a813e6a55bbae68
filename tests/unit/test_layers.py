"""The layers of docs/architecture.md hold: import-linter's contracts pass.

The contracts live in pyproject.toml (``[tool.importlinter]``): the model and the scheduler
are pure, only the registry imports the etcd client and only the systemd adapter the D-Bus
library, the adapters build on the model alone, fleetctl reaches etcd only through its etcd
driver, and the product never imports the test lab. This test runs ``lint-imports`` so a
breach fails the test suite with import-linter's report of the offending import chain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept() -> None:
    assert LINT_IMPORTS.exists(), (
        f"{LINT_IMPORTS} missing: install the test extras (.venv/bin/pip install -e '.[test]')"
    )
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Shared parts of the reliability suite: fast and full (``stress``) modes, and the summary.

Every reliability test runs twice over: a ``fast`` parametrisation that ``make test`` runs (a
handful of cases per backend) and a ``full`` one marked ``stress`` that only ``make stress``
runs, with the counts of docs/guarantees.md. The full runs add their counts to a JSON summary
(``OOCSTORE_STRESS_REPORT``, default ``stress-summary.json`` in the working directory) from
which docs/guarantees.md quotes its numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

# The full counts run only under `make stress` (`-m stress`); the default run deselects them.
MODES = ["fast", pytest.param("full", marks=pytest.mark.stress)]


def report_path() -> Path:
    """Where the full runs write their summary."""
    return Path(os.environ.get("OOCSTORE_STRESS_REPORT", "stress-summary.json"))


def record(mode: str, section: str, backend: str, counts: dict[str, Any]) -> None:
    """Merge ``counts`` into the summary under ``section`` / ``backend`` (full mode only)."""
    if mode != "full":
        return
    path = report_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    entry = dict(counts)
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    doc.setdefault(section, {})[backend] = entry
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)

"""Chains of SIGKILLed writers on every backend, known and unknown length, dense and ragged.

Each chain writes one store: a writer process is SIGKILLed at a random instant (a random time
after it took the store, a few ms after its k-th commit, or inside close()), the store is opened
and must hold exactly a prefix of the source at least as long as the last commit the writer
reported (0 committed samples lost, 0 stores that fail to open), and the next writer resumes it;
the chain ends when a writer finishes, and the result must equal an uninterrupted write. The
full run (``make stress``) kills >= 200 writers per backend; ``make test`` a few.
"""

from __future__ import annotations

import random
import traceback
from pathlib import Path
from typing import Any

import pytest

import oocstore

from .conftest import SUFFIX
from .stress import MODES, record
from .test_crash import Run, Source, check_after_kill, check_full, run_writer

pytestmark = pytest.mark.crash

SOURCES = [
    Source("dense", "none", 80, 48 * 2**10),  # unknown length: the files grow, trimmed on close
    Source("dense", "short", 80, 48 * 2**10),  # declared 1000 rows: preallocated, then grown
    Source("dense", "exact", 80, 48 * 2**10),  # known length: preallocated once
    Source("ragged", "exact", 60, 12 * 2**10),  # dense -> packed -> padded on close
    Source("ragged", "none", 60, 12 * 2**10),  # the same with unknown length
]
KILLS = {"fast": 4, "full": 200}
ROUNDS_PER_CHAIN = 60  # a chain that long makes no progress: a resume keeps losing its work


def plan_for(rng: random.Random) -> tuple[Any, ...]:
    """A random instant to kill at."""
    roll = rng.random()
    if roll < 0.45:
        return ("time", rng.uniform(0.0, 0.25))
    if roll < 0.85:
        return ("commits", rng.randint(1, 3), rng.uniform(0.0, 0.01))
    return ("close", rng.uniform(0.0, 0.02))


@pytest.mark.parametrize("mode", MODES)
def test_kill_chains(tmp_path: Path, backend: str, mode: str) -> None:
    """SIGKILL writers at random instants until the target count; every store opens with its
    last commit exactly, and every chain's resumed result equals the whole source."""
    rng = random.Random(f"kills-{backend}-{mode}")
    target = KILLS[mode]
    wants: dict[Source, dict[str, Any]] = {}
    kills = lost = failed_opens = chains = finished = 0
    by_source: dict[str, int] = {}
    problems: list[str] = []
    while kills < target:
        src = SOURCES[(chains + rng.randrange(2)) % len(SOURCES)] if mode == "fast" else None
        src = src or SOURCES[chains % len(SOURCES)]
        want = wants.setdefault(src, src.expected())
        path = tmp_path / f"chain{chains}{SUFFIX[backend]}"
        chains += 1
        previous = -1
        for round_ in range(ROUNDS_PER_CHAIN):
            run: Run = run_writer(path, src, resume=round_ > 0, plan=plan_for(rng), throttle=0.001)
            if round_ > 0 and run.skip is not None and run.skip != max(previous, 0):
                lost += 1
                problems.append(f"{path.name}: resumed writer skipped {run.skip}, not {previous}")
            if not run.killed:
                break
            kills += 1
            key = f"{src.kind}-{src.known}"
            by_source[key] = by_source.get(key, 0) + 1
            try:
                n = check_after_kill(path, src, run, want)
            except AssertionError as err:
                lost += 1
                problems.append(f"{path.name} after kill {kills}: {err}")
                break
            except oocstore.OocstoreError:
                failed_opens += 1
                problems.append(f"{path.name} after kill {kills}: {traceback.format_exc()}")
                break
            if n < previous:
                lost += 1
                problems.append(f"{path.name}: committed length went from {previous} to {n}")
            previous = n
        else:
            pytest.fail(f"{path.name}: {ROUNDS_PER_CHAIN} writers in a row were killed")
        if not run.killed:
            finished += 1
            with oocstore.open(path) as store:
                check_full(store, src, want)  # resumed == an uninterrupted write of the source
        if problems:
            break
    record(
        mode,
        "kills",
        backend,
        {
            "kills": kills,
            "chains": chains,
            "resumed_to_completion": finished,
            "kills_by_source": by_source,
            "lost_commits": lost,
            "failed_opens": failed_opens,
        },
    )
    assert not problems, "\n".join(problems)
    assert kills >= target

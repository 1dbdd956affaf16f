"""Image-folder ingestion benchmark: ``ingest_images`` against the common single-process recipe.

Generates N (and 4N) JPEGs of 256x256 pixels in class folders, then times, each in a fresh
process:

* ``pillow loop``: the recipe people write first -- ``np.empty((n, 256, 256, 3))`` and a
  loop of ``Image.open(p).convert("RGB")`` into it, in one process (nothing is written to disk);
* ``ingest, 1 worker`` and ``ingest, all workers``: ``oocstore.ingest_images`` (decode in
  worker processes, EXIF orientation, labels and paths, a committed and fsync'd store).

Reported: images/s (wall clock of the whole call, worker start-up included), the peak RSS of
the main process (``ru_maxrss``) and the peak RSS of the main process and its workers together
(sampled with psutil every 10 ms). Targets: ingest with all workers >= 0.85 x (workers x the
single-process loop's rate); ingest's peak RSS the same at N and 4N.

    python benchmarks/ingest.py              # N = 4000 (and 16000), 3 rounds
    python benchmarks/ingest.py --quick      # N = 400, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

SIDE = 256
CLASSES = 10

# The contenders, run with ``python -c`` so each starts from nothing. They print one JSON line.
BASELINE = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
src = Path(sys.argv[1])
t0 = time.perf_counter()
paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
images = np.empty((len(paths), 256, 256, 3), dtype=np.uint8)
labels = np.empty(len(paths), dtype=np.int64)
classes = sorted({p.parent.name for p in paths})
for i, p in enumerate(paths):
    with Image.open(p) as im:
        images[i] = np.asarray(im.convert("RGB"))
    labels[i] = classes.index(p.parent.name)
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n": len(paths), "seconds": seconds, "rss": rss}))
"""

INGEST = """
import json, resource, sys, time
import oocstore
if __name__ == "__main__":
    t0 = time.perf_counter()
    store = oocstore.ingest_images(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]),
                                   progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": len(store), "seconds": seconds, "rss": rss}))
"""


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` 256x256 JPEGs (quality 90) into CLASSES class folders; reuse if present."""
    done = root / f".done-{n}"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    bases = []
    for _ in range(16):
        fx, fy = rng.uniform(0.01, 0.1, 2)
        grad = 128 + 80 * np.sin(fx * x + rng.uniform(0, 6)) * np.cos(fy * y)
        img = np.dstack([grad, np.roll(grad, 37, 0), np.roll(grad, 71, 1)])
        bases.append(img)
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise = rng.normal(0, 12, (SIDE, SIDE, 3))
        img = np.clip(np.roll(bases[i % 16], i, axis=1) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"class{i % CLASSES:02d}" / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def run(code: str, *args: str) -> dict[str, float]:
    """Run one contender in a fresh process; add its process tree's peak RSS and CPU time.

    Both are sampled with psutil every 10 ms (a process's last 10 ms of CPU may be missed).
    """
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peak = 0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            total = 0
            for p in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
            peak = max(peak, total)
        time.sleep(0.01)
    out, _ = proc.communicate()
    if proc.returncode:
        msg = f"contender failed ({proc.returncode})"
        raise SystemExit(msg)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["tree_rss"] = peak
    result["cpu"] = sum(cpu.values())
    return result


def drop_caches() -> None:
    """Flush dirty pages (the previous run's store) so they do not slow the next run."""
    os.sync()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=4000, help="images in the small set (N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N = 400, 1 round")
    parser.add_argument("--dir", default=None, help="where to generate images (reused)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds = 400, 1
    workers = len(os.sched_getaffinity(0))
    base = Path(args.dir or tempfile.gettempdir()) / "oocstore-bench-ingest"
    base.mkdir(parents=True, exist_ok=True)

    rows = []
    for n in (args.n, 4 * args.n):
        src = make_images(base / f"images-{n}", n)
        dst = base / "out.ooc"
        contenders = {
            "pillow loop (1 process, in RAM)": (BASELINE, (str(src),)),
            "ingest, 1 worker": (INGEST, (str(src), str(dst), "1")),
            f"ingest, {workers} workers": (INGEST, (str(src), str(dst), str(workers))),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, (code, cargs) in contenders.items():  # alternate contenders
                drop_caches()
                r = run(code, *cargs)
                assert r["n"] == n, r
                results[name].append(r)
                print(f"  N={n:>6} {name:<34} {n / r['seconds']:8.0f} images/s", flush=True)
        shutil.rmtree(dst, ignore_errors=True)
        for name, rs in results.items():
            rows.append(
                {
                    "n": n,
                    "name": name,
                    "rate": statistics.median(n / r["seconds"] for r in rs),
                    "rss": max(r["rss"] for r in rs),
                    "tree_rss": max(r["tree_rss"] for r in rs),
                    "cpu_ms": statistics.median(r["cpu"] / n * 1000 for r in rs),
                }
            )

    def rate(n: int, prefix: str) -> float:
        return next(r["rate"] for r in rows if r["n"] == n and r["name"].startswith(prefix))

    def stat(n: int, name: str, key: str) -> float:
        return next(r[key] for r in rows if r["n"] == n and r["name"] == name)

    print()
    load = os.getloadavg()[0]
    print(
        f"{workers} CPUs (load average {load:.1f} at the end); {args.rounds} round(s), median "
        "rate and CPU time (all processes), max peak RSS; 256x256 JPEGs, quality 90"
    )
    print()
    print(
        "| images | contender | images/s | CPU ms per image | peak RSS main "
        "| peak RSS with workers |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['name']} | {r['rate']:,.0f} | {r['cpu_ms']:.2f} "
            f"| {r['rss'] / 2**20:,.0f} MiB | {r['tree_rss'] / 2**20:,.0f} MiB |"
        )
    print()
    all_name = f"ingest, {workers} workers"
    for n in (args.n, 4 * args.n):
        single = rate(n, "pillow loop")
        ratio = rate(n, all_name) / (workers * single)
        cpu_ratio = stat(n, "pillow loop (1 process, in RAM)", "cpu_ms") / stat(
            n, all_name, "cpu_ms"
        )
        print(
            f"- N={n:,}: ingest with {workers} workers = {ratio:.2f} x ({workers} x pillow loop) "
            f"(target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'}); CPU time per image "
            f"of the loop / of ingest = {cpu_ratio:.2f} (the ratio an idle machine allows)"
        )
    for name in ("ingest, 1 worker", all_name):
        grow = stat(4 * args.n, name, "rss") / stat(args.n, name, "rss")
        tree = stat(4 * args.n, name, "tree_rss") / stat(args.n, name, "tree_rss")
        print(
            f"- {name}: peak RSS at 4N / at N = {grow:.2f} (main), {tree:.2f} (with workers) "
            f"(target: flat, <= 1.1: {'met' if max(grow, tree) <= 1.1 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()

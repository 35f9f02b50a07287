"""The machine a benchmark runs on, and how busy it is: timings on a shared 2-core VM are only
comparable when the neighbours are quiet, so benchmarks wait for quiet and record the load."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[machine] {msg}", flush=True)


def machine() -> dict:
    model = ""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {"cpu": model, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def cpu_ticks() -> tuple[int, int]:
    """(all, busy) CPU ticks of the machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(f), sum(f) - f[3] - f[4]              # idle and iowait are not busy


def busy_share(seconds: float = 2.0) -> float:
    a0, b0 = cpu_ticks()
    time.sleep(seconds)
    a1, b1 = cpu_ticks()
    return (b1 - b0) / max(a1 - a0, 1)


def load_now() -> str:
    """Load averages (1, 5, 15 min) and the share of all cores busy over the last 2 s (other work)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (CPU {100 * busy_share():.0f}% busy)"


def wait_quiet(limit: float = 0.15, max_wait: float = 600) -> None:
    """Wait (up to max_wait s) until other work uses less than `limit` of the cores, for timings."""
    t0 = time.time()
    while (b := busy_share(3.0)) > limit and time.time() - t0 < max_wait:
        log(f"machine busy ({100 * b:.0f}% of the cores in use by other work), waiting")
        time.sleep(10)

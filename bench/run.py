"""Run the benchmarks and rewrite their sections of the docs: ``make bench``.

    .venv/bin/python bench/run.py                  # every benchmark
    .venv/bin/python bench/run.py tier1-overhead   # one (or several) by name

Each benchmark module defines ``BENCHMARK`` (a :class:`harness.Benchmark`): to add one,
write ``bench/<module>.py`` and add its name to ``MODULES``. Only the text between a
section's markers is rewritten; the rest of the doc is kept. Programs a benchmark needs
(wrk, nginx) are installed with apt-get when missing and we are root; otherwise the
benchmark stops with the command to run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import time

import harness
from harness import Benchmark

MODULES = [
    "tier1_overhead",
    "tier1_worker_freedom",
    "server_matrix",
    "tier2_jobs",
    "dashboard",
]
#: Debian package of each program a benchmark may need
PACKAGES = {"wrk": "wrk", "nginx": "nginx"}


def ensure_tools(tools: tuple[str, ...]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    packages = [PACKAGES[tool] for tool in missing]
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench: {', '.join(missing)} missing; install with: sudo {' '.join(command)}")
    print(f"bench: installing {', '.join(packages)} with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(command, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def main() -> None:
    benchmarks: dict[str, Benchmark] = {}
    for module in MODULES:
        benchmark: Benchmark = importlib.import_module(module).BENCHMARK
        benchmarks[benchmark.name] = benchmark
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(benchmarks))
    names = parser.parse_args().names or list(benchmarks)
    unknown = set(names) - set(benchmarks)
    if unknown:
        parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(benchmarks)}")
    started = time.perf_counter()
    for name in names:
        benchmark = benchmarks[name]
        ensure_tools(benchmark.tools)
        print(f"bench: {name} ...", flush=True)
        begun = time.perf_counter()
        text = benchmark.run()
        marker = benchmark.marker or f"bench:{name}"
        harness.write_section(benchmark.doc, marker, text, benchmark.title)
        where = benchmark.doc.relative_to(harness.ROOT)
        print(f"bench: {name} done in {time.perf_counter() - begun:.0f} s → {where}", flush=True)
    print(f"bench: all done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

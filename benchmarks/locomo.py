"""`python -m benchmarks.locomo`: the LoCoMo QA benchmark, `memr1 bench locomo` run from a clone.

The harness ships in the package as memr1.bench_locomo; this entry point keeps the commands in
README.md and RESULTS.md working. Options: `python -m benchmarks.locomo -h`.
"""

from __future__ import annotations

import sys

from memr1.bench_locomo import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks.locomo"))

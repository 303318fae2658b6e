"""`python -m benchmarks.locomo_retrieval`: evidence recall on LoCoMo, `memr1 bench locomo-retrieval` from a clone.

The harness ships in the package as memr1.bench_locomo_retrieval; this entry point keeps the
commands in README.md and RESULTS.md working. Options: `python -m benchmarks.locomo_retrieval -h`.
"""

from __future__ import annotations

import sys

from memr1.bench_locomo_retrieval import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks.locomo_retrieval"))

"""Plain-script benchmarks (what `fastdyn bench` runs): a markdown table and, with
--json, a results file.

    .venv/bin/python benchmarks/run.py [--only norm,clip,...] [--json benchmarks/results/x.json]
"""
import sys

from fastdyn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

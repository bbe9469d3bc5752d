"""Run one command and record its wall time and peak RSS: `python bench/measure.py OUT.json -- CMD…`.

This wrapper is deliberately tiny: it only spawns the command, waits, and reads
getrusage(RUSAGE_CHILDREN).ru_maxrss, the peak resident set of the command (Linux carries a
parent's peak into a child at fork/exec, so the parent must be small: this one is ~10 MB).
The command's own output passes through; the figures go to OUT.json.
"""

import json
import resource
import subprocess
import sys
import time


def main() -> int:
    out, separator, *cmd = sys.argv[1:]
    if separator != "--" or not cmd:
        print("usage: measure.py OUT.json -- CMD...", file=sys.stderr)
        return 2
    start = time.perf_counter()
    returncode = subprocess.call(cmd)
    seconds = time.perf_counter() - start
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "maxrss_kb": maxrss_kb, "returncode": returncode}, f)
    return returncode


if __name__ == "__main__":
    sys.exit(main())

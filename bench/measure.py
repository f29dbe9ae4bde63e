"""Runs a command and samples the resident memory of its whole process tree."""
import subprocess
import time

import psutil


def measure(command):
    """(seconds, peak resident bytes of the process tree, output)."""
    start = time.monotonic()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process))
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    output = process.stdout.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return elapsed, peak, output


def _tree_rss(process):
    total = 0
    try:
        for member in [process] + process.children(recursive=True):
            total += member.memory_info().rss
    except psutil.NoSuchProcess:
        pass
    return total

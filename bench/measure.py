"""Runs a command and samples the resident memory of its whole process tree."""
import subprocess
import threading
import time

import psutil


def measure(command, env=None):
    """(seconds, peak resident bytes of the process tree, output); `env`: the command's environment."""
    start = time.monotonic()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    chunks = []  # read as it comes: a command that prints more than the pipe holds would otherwise stall
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: process.stdout.read(65536), b"")))
    reader.start()
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process))
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    reader.join()
    output = b"".join(chunks).decode(errors="replace")
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


def write_section(path, report):
    """Replaces the section of `path` that starts with the report's first line (a '# ' title), or appends it."""
    title = report.splitlines()[0]
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# ")), len(lines))
        lines[start:end] = report.rstrip("\n").splitlines() + [""]
    else:
        lines += ([""] if lines else []) + report.rstrip("\n").splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")

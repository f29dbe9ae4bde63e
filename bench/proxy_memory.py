"""Benchmark of the log proxy's memory with its queue full: the most the front holds whatever the traffic.

`cxr log-proxy` (its default limits, every answered request logged) runs as its own process in front of an
upstream that answers each :predict slowly (0.5 s, a valid four-row answer), so that bodies pile up. Clients
then send the largest bodies the proxy takes (--max_body_bytes, 32 MiB: four base64 images) at once, more
than it has workers: the proxy holds at most max_buffered_bytes of bodies (256 MiB; past it 503), the
request log's queue at most max_queued_bytes (256 MiB; past it the sample is dropped and counted). The row
is the proxy's peak resident memory above its resident memory before the first request (sampled every 5 ms).

    .venv/bin/python bench/proxy_memory.py --write bench/RESULTS.md
"""
import argparse
import base64
import collections
import http.client
import http.server
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from measure import write_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXR = os.path.join(REPO, ".venv", "bin", "cxr")
MAX_BODY = 32 * 1024 * 1024
PATH = "/v1/models/cxr/versions/1:predict"
ANSWER = json.dumps({"predictions": [{"probabilities": [0.25] * 4}] * 4}).encode()


class SlowUpstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.5)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass


def largest_body() -> bytes:
    """Four base64 'PNG' values filling the proxy's --max_body_bytes (the bytes are not decoded by the proxy)."""
    per_image = (MAX_BODY - 200) // 4 * 3 // 4
    value = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(per_image - 8)).decode()
    body = json.dumps({"instances": [{"b64": value}] * 4}).encode()
    assert len(body) <= MAX_BODY, len(body)
    return body


def run_case(proxy_port: int, body: bytes, clients: int, rounds: int) -> collections.Counter:
    outcomes = collections.Counter()
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=120)
        for _ in range(rounds):
            try:
                connection.request("POST", PATH, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = "connection error"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=120)
            with lock:
                outcomes[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", help="replace this section of a results file (bench/RESULTS.md)")
    args = parser.parse_args()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    body = largest_body()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-proxy-memory-") as work:
        for clients, rounds in ((1, 4), (8, 3), (24, 2)):
            address = os.path.join(work, f"address-{clients}")
            proxy = subprocess.Popen([CXR, "log-proxy", "--upstream", f"http://127.0.0.1:{upstream.server_port}",
                                      "--port", "0", "--address_file", address,
                                      "--request_log_root", os.path.join(work, f"log-{clients}"),
                                      "--request_log_sample_rate", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while not (os.path.exists(address) and open(address).read().strip()):
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise RuntimeError(f"the proxy did not start: {proxy.stderr.read()[-2000:]}")
                time.sleep(0.1)
            port = int(open(address).read().strip().rsplit(":", 1)[1].strip("/"))
            process = psutil.Process(proxy.pid)
            time.sleep(1.0)
            before = process.memory_info().rss
            peak, sampling = [before], [True]

            def sample():
                while sampling[0]:
                    peak[0] = max(peak[0], process.memory_info().rss)
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            began = time.monotonic()
            outcomes = run_case(port, body, clients, rounds)
            took = time.monotonic() - began
            time.sleep(3.0)  # the log writer drains its queue
            sampling[0] = False
            sampler.join()
            proxy.terminate()
            _, stderr = proxy.communicate(timeout=60)
            dropped = [line for line in stderr.splitlines() if "dropped" in line.lower()]
            rows.append((clients, rounds, dict(outcomes), (peak[0] - before) / 1e6, before / 1e6, took,
                         dropped[-1][-160:] if dropped else ""))
    upstream.shutdown()
    lines = ["# Log proxy memory (`bench/proxy_memory.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores. `cxr log-proxy` with its defaults "
             "(8 workers, --max_body_bytes 32 MiB, 256 MiB of bodies held at once, a request log queue of 256 MiB), "
             f"every answered request logged, in front of an upstream answering in 0.5 s. Each request: "
             f"{len(body) / 2**20:.1f} MiB, four base64 images. 'added' is the proxy's peak resident memory above "
             "its resident memory before the first request.", "",
             "| clients at once | requests each | outcomes | added MB | resident before MB | s |",
             "|---:|---:|---|---:|---:|---:|"]
    for clients, rounds, outcomes, added, before, took, _ in rows:
        said = ", ".join(f"{count} x {status}" for status, count in sorted(outcomes.items(), key=str))
        lines.append(f"| {clients} | {rounds} | {said} | {added:.0f} | {before:.0f} | {took:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for row in rows:
        if row[-1]:
            print("log:", row[-1])
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

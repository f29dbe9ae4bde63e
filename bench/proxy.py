"""Benchmark of the request log's proxy: what `cxr log-proxy` adds to a request, and whether it holds up.

`cxr serve` (standing in for TF Serving: the same REST API) serves the demo model exported by the
Trainer's code; `cxr log-proxy` sits in front of it in its own process, logging every request
(sample rate 1). With 224 px PNG phantoms, one image a request:
- added latency: requests sent straight to the server, through a proxy that does not log and
  through the logging one, in interleaved blocks of 20 in a row, p50 and p99 of each and their difference;
- 8 clients at once through the proxy: images/s and failed requests;
- the same through a proxy whose log cannot be written (its root is a file): failed requests
  (target: none) and requests/s.
Targets: p50 added <= 2 ms, no failed request when logging fails.

    .venv/bin/python bench/proxy.py --write bench/RESULTS.md
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil

from measure import write_section
from serving import export_model

PIXELS = 224
CLIENTS = 8
BLOCK = 20
TARGET_ADDED_P50_MS = 2.0


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def pngs(count: int):
    from cxr.dataprep import phantoms
    from helpers import encode
    from PIL import Image
    rng = np.random.default_rng(0)
    findings = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")
    return [encode(Image.fromarray(phantoms.to_uint8(phantoms.render(
        rng, phantoms.Anatomy.random(rng), findings[i % 4], PIXELS))), "PNG") for i in range(count)]


def started(command, work: str, name: str):
    """(process, URL) of a cxr command given --address_file."""
    address = os.path.join(work, f"{name}.address")
    process = subprocess.Popen([sys.executable, "-m", "cxr", *command, "--address_file", address],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not os.path.exists(address):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.1)
    with open(address) as f:
        return process, f.read().strip()


def interleaved(clients, images, count, block=BLOCK):
    """Latencies (s) of each client's requests: `block` requests in a row to each client in turn, so that the
    log's writer, which builds a record after its answer is sent, works during the logging proxy's next
    request as it does for a client sending one request after another (and the machine's speed, drifting,
    is shared by every path)."""
    latencies = [[] for _ in clients]
    for first in range(0, count, block):
        for client, measured in zip(clients, latencies):
            for index in range(first, min(first + block, count)):
                start = time.perf_counter()
                client.predict([images[index % len(images)]])
                measured.append(time.perf_counter() - start)
    return [np.array(measured) for measured in latencies]


def concurrent(url, images, requests_per_client):
    """(images/s, failed requests) of CLIENTS clients sending one image a request at once."""
    from cxr.serving.client import ServingClient, ServingRequestError

    def client_loop(offset):
        client, failed = ServingClient(url=url, retries=0, timeout_s=120), 0
        for index in range(requests_per_client):
            try:
                client.predict([images[(offset + index) % len(images)]])
            except ServingRequestError:
                failed += 1
        return failed

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        failed = sum(pool.map(client_loop, range(CLIENTS)))
    return CLIENTS * requests_per_client / (time.perf_counter() - start), failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", help="replace this section of a RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="a few requests only: checks the script runs")
    args = parser.parse_args(argv)
    count, per_client = (5, 2) if args.quick else (400, 40)
    from cxr.serving.client import ServingClient
    with tempfile.TemporaryDirectory() as work:
        base_path = export_model("demo", work)
        images = pngs(16)
        server, server_url = started(["serve", "--model_base_path", base_path, "--rest_api_port", "0",
                                      "--rest_api_num_threads", str(CLIENTS)], work, "server")
        broken_root = os.path.join(work, "not-a-folder")
        open(broken_root, "w").close()
        processes = [server]
        try:
            proxy, proxy_url = started(["log-proxy", "--upstream", server_url, "--port", "0", "--request_log_root",
                                        os.path.join(work, "log"), "--request_log_sample_rate", "1.0"], work, "proxy")
            processes.append(proxy)
            broken, broken_url = started(["log-proxy", "--upstream", server_url, "--port", "0",
                                          "--request_log_root", broken_root, "--request_log_sample_rate", "1.0"],
                                         work, "broken")
            processes.append(broken)
            plain, plain_url = started(["log-proxy", "--upstream", server_url, "--port", "0"], work, "plain")
            processes.append(plain)
            pki = certificates(work)
            secure, secure_url = started(["log-proxy", "--upstream", server_url, "--port", "0", "--request_log_root",
                                          os.path.join(work, "log-tls"), "--request_log_sample_rate", "1.0",
                                          "--tls_cert_file", pki["server"][0], "--tls_key_file", pki["server"][1],
                                          "--tls_client_ca_file", pki["ca"]], work, "secure")
            processes.append(secure)
            clients = [ServingClient(url=url, retries=0, timeout_s=120) for url in (server_url, plain_url, proxy_url)]
            clients.append(ServingClient(url=secure_url, retries=0, timeout_s=120, ca_file=pki["ca"],
                                         cert_file=pki["client"][0], key_file=pki["client"][1]))
            for client in clients:
                client.wait_until_available(120)
                client.predict(images[:1])
            straight, forwarded, through, secured = interleaved(clients, images, count)
            rate, failed = concurrent(proxy_url, images, per_client)
            direct_rate, direct_failed = concurrent(server_url, images, per_client)
            broken_rate, broken_failed = concurrent(broken_url, images, per_client)
            logged = sum(len(files) for _, _, files in os.walk(os.path.join(work, "log")))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    report = render(straight, forwarded, through, (direct_rate, direct_failed), (rate, failed), (broken_rate, broken_failed),
                    logged, images, secured)
    print(report)
    if args.write:
        write_section(args.write, report)
    return 0


def certificates(work: str) -> dict:
    """A CA, the proxy's certificate for 127.0.0.1 and a client's (tests/certificates.py)."""
    from certificates import Authority, write_pair
    ca = Authority("bench CA")
    folder = os.path.join(work, "pki")
    return {"ca": ca.write(folder), "server": write_pair(folder, "server", *ca.issue("proxy", server=True)),
            "client": write_pair(folder, "client", *ca.issue("bench-client"))}


def render(straight, forwarded, through, direct, proxied, broken, logged_files, images, secured) -> str:
    p50s, p50f, p50t, p50m = (np.median(values) * 1000 for values in (straight, forwarded, through, secured))
    p99s, p99f, p99t, p99m = (np.percentile(values, 99) * 1000 for values in (straight, forwarded, through, secured))
    added = p50t - p50s
    kb = sum(len(image) for image in images) / len(images) / 1e3
    lines = ["# Request log proxy (`bench/proxy.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, no GPU. `cxr serve` with the demo model "
             f"stands in for TF Serving; `cxr log-proxy` in front of it logs every request (sample rate 1). One "
             f"{PIXELS} x {PIXELS} PNG a request ({kb:,.0f} kB), in blocks of {BLOCK} requests in a row to each path in "
             f"turn; server, proxy and clients share the machine.", "",
             "| path | requests | p50 ms | p99 ms |", "|---|---:|---:|---:|",
             f"| straight to the server | {len(straight)} | {p50s:,.1f} | {p99s:,.1f} |",
             f"| through a proxy that does not log | {len(forwarded)} | {p50f:,.1f} | {p99f:,.1f} |",
             f"| through the proxy, logging every request | {len(through)} | {p50t:,.1f} | {p99t:,.1f} |",
             f"| through the proxy with mutual TLS, logging every request | {len(secured)} | {p50m:,.1f} | "
             f"{p99m:,.1f} |", "",
             f"Added at p50: **{added:,.2f} ms** (target <= {TARGET_ADDED_P50_MS:g} ms: "
             f"{'met' if added <= TARGET_ADDED_P50_MS else 'NOT met'}); forwarding alone {p50f - p50s:,.2f} ms; "
             f"with mutual TLS (kept-alive connections, one handshake per client) {p50m - p50s:,.2f} ms.", "",
             f"| {CLIENTS} clients at once | images/s | failed requests |", "|---|---:|---:|",
             f"| straight to the server | {direct[0]:,.1f} | {direct[1]} |",
             f"| through the proxy, logging | {proxied[0]:,.1f} | {proxied[1]} |",
             f"| through a proxy whose log cannot be written | {broken[0]:,.1f} | {broken[1]} |", "",
             f"Log files written: {logged_files}. When logging fails: "
             f"{'no failed request (target met)' if broken[1] == 0 else 'FAILED REQUESTS (target not met)'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

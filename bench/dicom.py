"""Benchmark of DICOM in (cxr/dicom/convert.py): conversions per second, what a DICOM request adds at the
serving front, and ingestion of a DICOM folder against the same images as PNG.

- Conversion: a 2,000 x 2,500 CR (12 of 16 bits, MONOCHROME1, a window), uncompressed, JPEG 2000
  lossless and lossy (5:1), and NEMA's real RG1 (1,841 x 1,955, 15 bits): seconds per file, split into
  reading and decoding the pixels, the LUT / window steps, and writing the 16-bit PNG.
- Front: `cxr serve` with the demo model behind `cxr log-proxy` (logging every request); the same
  picture sent as its converted PNG and as the DICOM file (uncompressed and JPEG 2000), one a request in
  interleaved blocks: p50 / p99, and what the DICOM adds over the PNG.
- Ingestion: `cxr build-tfrecords --dicom` on a folder of 1,024 x 1,024 12-bit DICOMs against
  `--covid-radiography` on the same pictures as 16-bit PNG: images/s and peak memory.

    .venv/bin/python bench/dicom.py --write bench/RESULTS.md
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import dicom_files as F  # noqa: E402 (tests/ on the path)
from measure import measure, write_section  # noqa: E402
from proxy import interleaved, started  # noqa: E402
from serving import export_model  # noqa: E402

CR_ROWS, CR_COLUMNS = 2_500, 2_000
BLOCK = 10


def study_sized_cr(syntax, seed: int = 0) -> bytes:
    from cxr.dataprep import phantoms
    rng = np.random.default_rng(seed)
    picture = np.clip(phantoms.render(rng, phantoms.Anatomy.random(rng), "pneumonia", CR_ROWS), 0, 1)
    picture = picture[:, (CR_ROWS - CR_COLUMNS) // 2:(CR_ROWS + CR_COLUMNS) // 2]
    stored = F.stored_values(picture, 12, monochrome1=True)
    return F.encoded(F.dataset(stored, bits_stored=12, photometric="MONOCHROME1", modality="CR",
                               WindowCenter=2048, WindowWidth=3600), syntax)


def conversion_rates(files, repeats: int):
    """{name: (seconds per conversion, seconds of each step)} for each file."""
    from cxr.dicom import convert as conversion
    results = {}
    for name, data in files.items():
        conversion.convert(data)  # warm
        steps = {"read and decode": 0.0, "LUT and window": 0.0, "PNG": 0.0}
        start = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            dataset = conversion.read_header(data, conversion.DicomRules())
            pixels = conversion._decoded(dataset)
            t1 = time.perf_counter()
            unit = conversion._unit_range(dataset, pixels)
            t2 = time.perf_counter()
            conversion.to_png(unit, 16)
            t3 = time.perf_counter()
            steps["read and decode"] += t1 - t0
            steps["LUT and window"] += t2 - t1
            steps["PNG"] += t3 - t2
        total = (time.perf_counter() - start) / repeats
        results[name] = (total, {step: seconds / repeats for step, seconds in steps.items()}, len(data))
    return results


def front_latency(work: str, files, count: int):
    from cxr.dicom.convert import convert
    from cxr.serving.client import ServingClient
    base_path = export_model("demo", work)
    server, server_url = started(["serve", "--model_base_path", base_path, "--rest_api_port", "0"], work, "server")
    processes = [server]
    try:
        proxy, proxy_url = started(["log-proxy", "--upstream", server_url, "--port", "0", "--request_log_root",
                                    os.path.join(work, "log"), "--request_log_sample_rate", "1.0"], work, "proxy")
        processes.append(proxy)
        client = ServingClient(url=proxy_url, retries=0, timeout_s=300)
        client.wait_until_available(300)
        payloads = {"converted PNG": convert(files["DICOM, uncompressed"]).png, **files}
        sent = {name: [data] for name, data in payloads.items()}
        for images in sent.values():
            client.predict(images)
        latencies = interleaved([_Sender(client, images) for images in sent.values()], [None], count, BLOCK)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
    return {name: (values, len(payloads[name])) for name, values in zip(sent, latencies)}


class _Sender:
    """interleaved() calls predict([image]) on each client; this one always sends its own payload."""

    def __init__(self, client, images):
        self.client, self.images = client, images

    def predict(self, _):
        return self.client.predict(self.images)


def ingestion(work: str, count: int, side: int):
    """{kind: (seconds, peak bytes, images)} of build-tfrecords on a DICOM folder and the same as PNG."""
    from PIL import Image  # noqa: F401 (Pillow writes the PNGs through convert)
    from cxr.dicom.convert import convert
    from cxr.dicom.pseudonyms import KEY_ENVIRONMENT_VARIABLE
    export, pngs = os.path.join(work, "export"), os.path.join(work, "png", "COVID-19_Radiography_Dataset", "COVID",
                                                                "images")
    os.makedirs(pngs)
    rows = ["file,label"]
    for n in range(count):
        data = F.dicom_file(seed=100 + n, size=side, bits_stored=12, finding="covid", patient_id=f"P{n}")
        relpath = f"P{n}/{n}.dcm"
        os.makedirs(os.path.join(export, f"P{n}"))
        with open(os.path.join(export, relpath), "wb") as f:
            f.write(data)
        with open(os.path.join(pngs, f"COVID-{n}.png"), "wb") as f:
            f.write(convert(data).png)
        rows.append(f"{relpath},COVID")
    labels = os.path.join(work, "labels.csv")
    with open(labels, "w") as f:
        f.write("\n".join(rows) + "\n")
    os.environ[KEY_ENVIRONMENT_VARIABLE] = "b7" * 32
    cxr = os.path.join(os.path.dirname(sys.executable), "cxr")
    results = {}
    for kind, flags in (("DICOM (--dicom)", ["--dicom", export, "--dicom-labels", labels]),
                        ("16-bit PNG (--covid-radiography)", ["--covid-radiography", os.path.join(work, "png")])):
        seconds, peak, _ = measure([cxr, "build-tfrecords", *flags, "--out", os.path.join(work, "out", str(len(results))),
                                    "--near-duplicate-distance", "-1"])
        results[kind] = (seconds, peak, count)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", help="replace this section of a RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="small counts: checks the script runs")
    args = parser.parse_args(argv)
    from pydicom.uid import JPEG2000, JPEG2000Lossless, ExplicitVRLittleEndian
    files = {"uncompressed": study_sized_cr(ExplicitVRLittleEndian), "JPEG 2000 lossless": study_sized_cr(JPEG2000Lossless),
             "JPEG 2000 lossy": study_sized_cr(JPEG2000)}
    rates = conversion_rates({**files, "RG1 (real CR, uncompressed)": F.real_file("RG1_UNCR.dcm"),
                              "RG1 (real CR, JPEG 2000 lossless)": F.real_file("RG1_J2KR.dcm")}, 1 if args.quick else 5)
    with tempfile.TemporaryDirectory() as work:
        front = front_latency(work, {"DICOM, uncompressed": files["uncompressed"],
                                     "DICOM, JPEG 2000 lossless": files["JPEG 2000 lossless"]},
                              4 if args.quick else 40)
        ingest = ingestion(work, 8 if args.quick else 200, 1024)
    report = render(rates, front, ingest)
    print(report)
    if args.write:
        write_section(args.write, report)
    return 0


def render(rates, front, ingest) -> str:
    lines = ["# DICOM in (`bench/dicom.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, no GPU; pydicom 3.0 with pylibjpeg's "
             f"openjpeg for JPEG 2000. A study-size CR: {CR_COLUMNS:,} x {CR_ROWS:,}, 12 of 16 bits, MONOCHROME1, "
             "a window; every conversion writes a 16-bit PNG (stored, zlib level 0).", "",
             "| file | bytes | s per file | files/s | read + decode s | LUT + window s | PNG s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (seconds, steps, size) in rates.items():
        lines.append(f"| {name} | {size:,} | {seconds:.3f} | {1 / seconds:.2f} | {steps['read and decode']:.3f} | "
                     f"{steps['LUT and window']:.3f} | {steps['PNG']:.3f} |")
    png_p50 = np.median(front["converted PNG"][0]) * 1000
    lines += ["", "Through `cxr log-proxy` (logging every request) to `cxr serve` with the demo model, one image a "
                  f"request, {len(front['converted PNG'][0])} requests each, interleaved in blocks of {BLOCK}:", "",
              "| request | body bytes (before base64) | p50 ms | p99 ms | added over the PNG at p50, ms |",
              "|---|---:|---:|---:|---:|"]
    for name, (values, size) in front.items():
        p50, p99 = np.median(values) * 1000, np.percentile(values, 99) * 1000
        lines.append(f"| {name} | {size:,} | {p50:,.0f} | {p99:,.0f} | "
                     f"{'-' if name == 'converted PNG' else f'{p50 - png_p50:,.0f}'} |")
    lines += ["", "`cxr build-tfrecords` (Beam DirectRunner, 2 workers, near-duplicate search off), the same "
                  "1,024 x 1,024 pictures:", "", "| input | images | seconds | images/s | peak memory MB |",
              "|---|---:|---:|---:|---:|"]
    for name, (seconds, peak, count) in ingest.items():
        lines.append(f"| {name} | {count} | {seconds:,.1f} | {count / seconds:,.1f} | {peak / 1e6:,.0f} |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = ("What the front adds is the conversion (first table) and the request's JSON parsed and written again "
         "with the PNG in it; a request without a DICOM is only scanned for its base64 prefix. Ingestion "
         "converts each DICOM twice, to probe it and again to write it, so that no image crosses Beam's "
         "shuffle (memory stays flat, as for PNG); JPEG 2000 costs its decode, single-threaded in openjpeg.")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the DICOM node: Orthanc (the real PACS, Debian's packages) sends one study of DX images to
`cxr dicom-node` by C-STORE, which answers each with a structured report stored back in Orthanc; the model
server (`cxr serve`'s code, in this process) is restarted once in the middle.

Reported: images per second from Orthanc's first C-STORE to the last report, the node's time per image
(convert, ask the model, build the SR, C-STORE it: the audit's answer_s) against the bare REST call for the
same image as a PNG (one per request), and what Orthanc holds afterwards (reports, none missing or twice);
then the node's resident memory in its own process while it answers images of a CR plate's size.
The model is the demo preset's, exported as the Trainer does (weights untrained: the cost is the same).

    .venv/bin/python bench/dicom_node.py --write bench/RESULTS.md
"""
import argparse
import os
import platform
import sys
import tempfile

from measure import write_section

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

IMAGES, SIZE = 200, 512  # a study's worth; 512 px 12-bit DX phantoms (the conversion's cost grows with it)
MEMORY_IMAGES, MEMORY_SIZE = 20, 2560  # a CR plate's size (6.6 M pixels, 13 MB as 16-bit)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    import node_load
    from serving import export_model
    with tempfile.TemporaryDirectory() as work:
        base_path = export_model("demo", work)
        files = node_load.one_study(args.images, args.size)
        result = node_load.run(work, base_path, files, restart_after=args.images // 3)
        large = node_load.one_study(MEMORY_IMAGES, MEMORY_SIZE)
        memory = node_load.node_memory(work, base_path, large)
    report = render(result, args) + "\n\n" + render_memory(memory)
    print(report)
    if args.write:
        write_section(args.write, report)


def render(result, args) -> str:
    ok = not (result["missing"] or result["twice"] or result["strays"] or result["store_failures"])
    added = result["answer_s_median"] - result["bare_rest_s_median"]
    return "\n".join([
        "# DICOM node (`bench/dicom_node.py`)",
        "",
        f"Orthanc 1.10 (Debian) sends {result['images']} DX images ({args.size} px, 12-bit) of one study to "
        f"`cxr dicom-node` in C-STORE batches of 20; the demo model's server restarted once after a third "
        f"(back in {result['restart_s'][0]:.1f} s). {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, everything on this machine.",
        "",
        "| images | seconds | images/s | node per image, median / p95 | bare REST call, median | added per image "
        "| retries | reports in Orthanc | missing / twice |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['images']} | {result['seconds']:.1f} | {result['images_per_s']:.1f} "
        f"| {result['answer_s_median'] * 1000:.0f} / {result['answer_s_p95'] * 1000:.0f} ms "
        f"| {result['bare_rest_s_median'] * 1000:.0f} ms | {added * 1000:.0f} ms | {result['retries']} "
        f"| {result['reports']} | {len(result['missing'])} / {len(result['twice'])} |",
        "",
        "All answered once." if ok else "NOT all answered once: see the counts above.",
    ])


def render_memory(memory) -> str:
    return "\n".join([
        f"Memory: `cxr dicom-node` in its own process (its default 2 workers and 4 associations) answering "
        f"{memory['images']} images of {MEMORY_SIZE} x {MEMORY_SIZE} px (12 bits in 16) sent in batches of 10: "
        f"resident {memory['at_rest_bytes'] / 2**20:.0f} MiB at rest, {memory['peak_bytes'] / 2**20:.0f} MiB at "
        f"peak (sampled every 20 ms); {memory['answered']} answered.",
    ])


if __name__ == "__main__":
    main()

"""Everything the commands print: each command's tables and summaries, formatted here and only here.

Plain Python over plain data (summaries, results, manifests): no TensorFlow, no TFX.
"""
import json
import os
import time
from typing import Dict, Mapping, Sequence

from cxr import contract
from cxr.contract import GATE_RECALL, LABELS, OUTCOMES, Nodes, class_metric_name, class_probabilities

EXIT_FAILED = 1
EXIT_NOT_BLESSED = 3
EXIT_ALARM = 4  # cxr monitor: a window differs from training or from the window before
EXIT_INTERRUPTED = 130  # as shells report a command ended by Ctrl-C


def run_summary(summary) -> str:
    """`cxr run`'s end: each component's status, drift, the test metrics, the gate, the serving check, the push."""
    lines = ["", f"run {summary.run_id}, components:"]
    for node in summary.components or list(summary.statuses):
        lines.append(f"  {node:<22} {summary.statuses.get(node, 'NOT RUN')}")
    if summary.error:
        lines += ["", f"FAILED: {summary.error}"]
    if Nodes.DRIFT_CHECK in summary.statuses:
        lines += ["", *_drift_lines(summary)]
    if summary.tuner_search:
        lines += ["", f"tuner: {summary.tuner_search}"]
    if summary.metrics:
        lines += ["", *_metric_table(summary.metrics)]
    lines.append("")
    if summary.blessed:
        lines.append("BLESSED: the model passed every threshold of the gate")
    elif summary.blessed is False:
        lines.append("NOT BLESSED: the model failed the gate and was not pushed:")
        lines += [f"  - {failure}" for failure in summary.failed_thresholds]
    if summary.serving_check:
        verdict = "passed" if summary.serving_check_passed else "FAILED, so nothing is pushed"
        lines.append(f"serving check {verdict}: {summary.serving_check}")
    lines.append(f"pushed to: {summary.pushed_to}" if summary.pushed_to else "pushed: nothing")
    return "\n".join(lines)


def _metric_table(metrics) -> list:
    overall = metrics.get(contract.OVERALL, {})
    lines = [f"test split: {int(overall.get(contract.EXAMPLE_COUNT, 0))} examples, "
             f"accuracy {_number(overall.get(contract.ACCURACY))}",
             f"  {'class':<20} {'precision':>9} {'recall':>7} {'AUC':>6} {'gate recall':>11}"]
    for class_id, name in enumerate(LABELS):
        argmax = metrics.get(contract.metric_sub_key(class_id, top_k=1), {})
        binarized = metrics.get(contract.metric_sub_key(class_id), {})
        lines.append(f"  {name:<20} {_number(argmax.get(class_metric_name('precision', name))):>9} "
                     f"{_number(argmax.get(class_metric_name('recall', name))):>7} "
                     f"{_number(binarized.get(contract.AUC)):>6} {_number(binarized.get(GATE_RECALL)):>11}")
    return lines


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _drift_lines(summary) -> list:
    if summary.drift_baseline_span is None:
        return ["drift: no earlier statistics to compare with"]
    if not summary.drift:
        return [f"drift against span {summary.drift_baseline_span}: within the thresholds"]
    return [f"DRIFT against span {summary.drift_baseline_span}:", *[f"  - {line}" for line in summary.drift]]


def class_by_source_table(written: dict) -> str:
    """`cxr build-tfrecords`: the images written, by label and source."""
    sources = sorted({source for by_source in written.values() for source in by_source})
    lines = ["\nwritten, by label and source:", "  ".join([f"{'label':<20}"] + [f"{s:>17}" for s in sources])]
    for label in sorted(written):
        lines.append("  ".join([f"{label:<20}"] + [f"{written[label].get(s, 0):>17,}" for s in sources]))
    return "\n".join(lines)


def reconciliation_table(table: dict) -> str:
    """`cxr build-tfrecords`: every file seen and its one outcome."""
    rows = [("files seen", table["seen"])] + [(status, table[status]) for status in OUTCOMES]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {count:>9,}" for name, count in rows]
    verdict = "seen = written + duplicate + conflict + quarantined + unmapped, one outcome per file"
    lines.append(f"{'':<{width}}  {'balanced' if table['balanced'] else 'NOT BALANCED'}: {verdict}")
    if table.get("files_without_exactly_one_outcome"):
        lines.append(f"files without exactly one outcome: {table['files_without_exactly_one_outcome']:,}, e.g. "
                     + ", ".join(table["examples"][:5]))
    return "\n".join(lines)


def unique_names(paths: Sequence[str]) -> Dict[str, str]:
    """{path: the shortest end of it that no other path shares}: the file name, or with as many of
    its folders as it takes (files of the same name from different folders keep apart)."""
    parts = {path: os.path.normpath(os.path.abspath(path)).split(os.sep) for path in paths}
    names = {}
    for path, own in parts.items():
        depth = 1
        while depth < len(own) and any(other[-depth:] == own[-depth:] for key, other in parts.items()
                                       if os.path.abspath(key) != os.path.abspath(path)):
            depth += 1
        names[path] = "/".join(own[-depth:])
    return names


def prediction_table(results) -> str:
    """`cxr predict`: a row per file, its class and every class's probability (or its error)."""
    names = unique_names([result.path for result in results])
    width = max([len("file")] + [len(name) for name in names.values()])
    header = [f"{'file':<{width}}", f"{'class':<19}"] + [f"{name:>19}" for name in contract.LABELS]
    lines = ["  ".join(header)]
    for result in results:
        name = f"{names[result.path]:<{width}}"
        if result.error:
            lines.append(f"{name}  error: {result.error}")
            continue
        probabilities = class_probabilities(result.outputs)
        lines.append("  ".join([name, f"{result.outputs[contract.CLASS_NAME]:<19}"] +
                               [f"{probabilities[label]:>19.3f}" for label in contract.LABELS]))
    return "\n".join(lines)


def conversion_table(results) -> str:
    """`cxr convert-dicom`: a line per file, what was written and what the file is, or why it was refused."""
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.path}: {result.error}")
            continue
        converted, facts = result.converted, result.converted.acquisition
        lines.append(f"{result.path} -> {result.png_path}: {converted.width} x {converted.height}, "
                     f"{converted.bit_depth}-bit PNG ({facts.modality} {facts.view_position}, "
                     f"{facts.photometric_interpretation}, {facts.bits_stored} bits stored)")
    refused = sum(1 for result in results if result.error)
    lines.append(f"{len(results) - refused} converted, {refused} refused")
    return "\n".join(lines)


def predictions_json(results, overlays: Mapping[str, str]) -> str:
    """One object per file; `overlays` maps an image's path to its Grad-CAM overlay's."""
    documents = []
    for result in results:
        document = {"file": result.path}
        if result.error:
            document["error"] = result.error
        else:
            document.update(class_name=result.outputs[contract.CLASS_NAME],
                            class_id=result.outputs[contract.CLASS_ID],
                            probabilities=class_probabilities(result.outputs))
            if result.path in overlays:
                document["gradcam_png"] = overlays[result.path]
        documents.append(document)
    return json.dumps(documents, indent=2)


def schedules_table(schedules) -> str:
    """`cxr kfp schedules`: one row per recurring run."""
    if not schedules:
        return "No schedules."
    header = ("NAME", "CRON", "STATUS", "MAX CONCURRENCY", "ID", "PIPELINE VERSION")
    rows = [header] + [(s.name, s.cron, s.status, str(s.max_concurrency), s.id, s.pipeline_version_id)
                       for s in schedules]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def monitoring_summary(result: dict, out_dir: str) -> str:
    """One line per window of cxr monitor: the version that answered, when, how many images, the verdict."""
    if not result["windows"]:
        return (f"no logged :predict request with images between {_utc(result['since'])} and "
                f"{_utc(result['until'])} UTC under {result['logs']}")
    lines = [f"version {version}: {found['training_images']} training images ({found['from']}), "
             + ("the ServingCheck's test answers" if found["test_answers"] else "no test answers to compare with")
             for version, found in result["versions"].items()]
    lines.append(f"{'version':>12}  {'from (UTC)':19}  {'images':>6}  verdict")
    for window in result["windows"]:
        alarms = [f"{f['check']} {f['feature']}" for f in window["findings"] if f["alarm"]]
        verdict = (window.get("too_small") or "no requests") if not window["judged"] else \
            ("ALARM: " + ", ".join(alarms)) if window["alarm"] else "as in training"
        lines.append(f"{window['version']:>12}  {_utc(window['start'])}  {window['images']:>6}  {verdict}")
    lines.append(f"{result.get('queued_for_labelling', 0)} images queued for labelling; "
                 f"page: {os.path.join(out_dir, 'index.html')}")
    return "\n".join(lines)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def feedback_summary(manifest: dict) -> str:
    """What cxr feedback made of the labelled images, and the new span's classes by source."""
    feedback = manifest["feedback"]
    lines = [f"span {manifest['span']}: span {feedback['extends_span']} and {feedback['written']} of "
             f"{feedback['labelled']} labelled images ({feedback['duplicate']} duplicates, {feedback['conflict']} "
             f"conflicts, {feedback['quarantined']} quarantined)"]
    lines += [f"  {entry['sha256'][:16]}  {entry['outcome']}" + (f" of {entry['of']} ({entry['its_label']})"
                                                                 if "of" in entry else "")
              for entry in feedback["images"] if entry["outcome"] != "written"]
    return "\n".join(lines + [class_by_source_table(manifest["written"])])

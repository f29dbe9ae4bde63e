"""Writes the report folder: index.html (opens from disk, no server), its images beside it,
statistics.html (TFDV's view), report.json (every number shown) and predictions.csv."""
import base64
import csv
import html
import io
import itertools
import json
import math
import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow_data_validation as tfdv

from cxr import contract, html_page
from cxr.contract import LABELS
from cxr import classification as metrics
from cxr.pipeline.report.collect import RunReportData
from cxr.serving.overlay import overlay

MODEL_CARD = """
<p><b>Intended use.</b> Research and engineering on chest X-ray classification pipelines. Not a medical
device; not for clinical diagnosis or triage.</p>
<p><b>Data.</b> COVID-19 Radiography Database (Kaggle, Chowdhury et al. / Rahman et al.; see its licence on
Kaggle), the curated COVID-19 PA set (Mendeley Data, CC BY 4.0), NIH ChestX-ray14 (NIH Clinical Center;
unrestricted use with citation). The demo runs on synthetic phantoms, not on these.</p>
<p><b>Known limits.</b> Classes come from different datasets, so the source can stand in for the finding
(see the source-confound check); the NIH labels are mined from reports; patients may be duplicated across
datasets beyond what de-duplication finds; images are resized to a square and made gray; performance on
other hospitals, scanners and populations is unknown.</p>
"""


def build_numbers(data: RunReportData) -> dict:
    p = data.predictions
    predicted = p.probabilities.argmax(axis=1) if len(p.labels) else np.zeros(0, int)
    counts = metrics.confusion(p.labels, predicted, len(LABELS))
    hits = int((predicted == p.labels).sum())
    return {
        "run_id": data.summary.run_id, "span": data.span, "test_examples": len(p.labels),
        "accuracy": hits / len(p.labels) if len(p.labels) else math.nan,
        "accuracy_ci": metrics.wilson(hits, len(p.labels)),
        "tfma_accuracy": data.summary.metrics.get(contract.OVERALL, {}).get(contract.ACCURACY),
        "confusion": counts.tolist(), "per_class": metrics.per_class(p.labels, p.probabilities, LABELS),
        "by_source": metrics.sliced_accuracy(p.labels, predicted, p.sources),
        "by_acquisition": metrics.sliced_accuracy(
            p.labels, predicted, [f"{source}: {acquired}" for source, acquired in zip(p.sources, p.acquisitions)]),
        "calibration": metrics.calibration(p.labels, p.probabilities),
        "source_confound": metrics.source_confound(p.labels, p.sources),
        "patient_overlap": _patient_overlap(data.patients),
        "counts": {split: {f"{label}|{source}": n for (label, source), n in sorted(data.counts[split].items())}
                   for split in contract.SPLITS},
        "blessed": data.summary.blessed, "failed_thresholds": data.summary.failed_thresholds, "gate": data.gate,
        "settings": data.settings, "tuner_trials": data.tuner_trials, "tuner_search": data.tuner_search,
    }


def _patient_overlap(patients) -> Dict[str, int]:
    return {f"{a}/{b}": len(patients.get(a, set()) & patients.get(b, set()))
            for a, b in itertools.combinations(contract.SPLITS, 2)}


def write_report(data: RunReportData, out_dir: str) -> str:
    """Writes the report into out_dir; its index.html holds its images, so the page stands alone
    (as a file, or as the HTML artifact Kubeflow Pipelines' UI shows)."""
    os.makedirs(out_dir, exist_ok=True)
    numbers = build_numbers(data)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(numbers, f, indent=1, default=_plain)
    _write_predictions(data, os.path.join(out_dir, "predictions.csv"))
    has_statistics = _write_statistics(data.statistics, os.path.join(out_dir, "statistics.html"))
    gallery = _gallery(data)
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_page(data, numbers, gallery, has_statistics))
    return path


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def _write_predictions(data: RunReportData, path: str) -> None:
    p = data.predictions
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "source", "label", "predicted", *[f"p_{name}" for name in LABELS]])
        for file, source, label, row in zip(p.files, p.sources, p.labels, p.probabilities):
            writer.writerow([file, source, LABELS[label], LABELS[int(row.argmax())], *[f"{v:.6f}" for v in row]])


def _write_statistics(statistics, path: str) -> bool:
    if statistics is None:
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(tfdv.utils.display_util.get_statistics_html(statistics))
    return True


def _gallery(data: RunReportData) -> List[dict]:
    """Grad-CAM overlays of the kept test images (explained when the predictions were made), as data URIs."""
    p = data.predictions
    label_of = dict(zip(p.files, p.labels))
    entries = []
    for name, explained in sorted(p.gallery.items()):
        png = io.BytesIO()
        overlay(explained.image, explained.heatmap).save(png, "PNG")
        entries.append({"src": f"data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}", "file": name,
                        "label": LABELS[label_of[name]], "predicted": explained.predicted,
                        "probability": explained.probability})
    return entries


def _page(data: RunReportData, numbers: dict, gallery: List[dict], has_statistics: bool) -> str:
    sections = [_data_section(data, numbers, has_statistics), _training_section(data, numbers),
                _evaluation_section(numbers), _gallery_section(gallery),
                f"<h2>Model card</h2>{MODEL_CARD}"]
    title = f"cxr run {numbers['run_id']}"
    # The script marks each image as loaded or broken, so a headless browser can check the page.
    return html_page.page(title, f"<h1>{html.escape(title)} (span {numbers['span']})</h1>{''.join(sections)}",
                          script=LOADED_SCRIPT)


LOADED_SCRIPT = ('window.addEventListener("load",function(){document.querySelectorAll("img").forEach(function(i){'
                 'i.setAttribute("data-loaded",i.complete&&i.naturalWidth>0?"yes":"no");});'
                 'document.body.setAttribute("data-ready","yes");});')


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value, digits=3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(value, ci) -> str:
    return f"{_number(value)} [{_number(ci[0])}, {_number(ci[1])}]"


def _data_section(data: RunReportData, numbers: dict, has_statistics: bool) -> str:
    keys = sorted({key for split in contract.SPLITS for key in data.counts[split]})
    rows = [[html.escape(label), html.escape(source), *[data.counts[split][(label, source)]
                                                        for split in contract.SPLITS]]
            for label, source in keys]
    overlap = numbers["patient_overlap"]
    manifest = data.manifest or {}
    reconciliation = manifest.get("reconciliation", {})
    parts = ["<h2>Data</h2>", _table(["label", "source", *contract.SPLITS], rows),
             f"<p>Patients in two splits (must be 0): "
             + ", ".join(f"{pair}: <b class='{'good' if n == 0 else 'bad'}'>{n}</b>" for pair, n in overlap.items())
             + "</p>"]
    if manifest:
        parts.append(f"<p>Ingestion of span {numbers['span']}: seen {reconciliation.get('seen')}, written "
                     f"{reconciliation.get('written')}, duplicates {len(manifest.get('duplicates', []))}, "
                     f"conflicts {len(manifest.get('conflicts', []))}, quarantined "
                     f"{len(manifest.get('quarantined', []))}, unmapped {reconciliation.get('unmapped')}.</p>")
        conflicts = [[html.escape(c["file"]), html.escape(", ".join(f"{x['label']}" for x in c.get("copies", [])))]
                     for c in manifest.get("conflicts", [])]
        if conflicts:
            parts.append(_table(["conflicting file", "labels of its copies"], conflicts))
    if has_statistics:
        parts.append('<p><a href="statistics.html">TFDV statistics of the training split</a></p>')
    return "".join(parts)


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"training": {"epochs": 3}} -> {"training.epochs": 3}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _training_section(data: RunReportData, numbers: dict) -> str:
    parts = ["<h2>Training</h2>"]
    for metric in ("loss", "accuracy"):
        series = {phase: data.curves.get(phase, {}).get(metric, []) for phase in ("train", "validation")}
        if any(series.values()):
            parts.append(f"<figure>{_line_chart(series, metric)}<figcaption>{metric} per epoch</figcaption></figure>")
    if data.settings:
        parts.append(_table(["setting", "value"], [[html.escape(k), html.escape(json.dumps(v))]
                                                   for k, v in sorted(_flat(data.settings).items())]))
    if numbers["tuner_trials"]:
        parts.append(_tuner_section(numbers["tuner_trials"], numbers["tuner_search"] or ""))
    return "".join(parts)


def _tuner_section(trials: List[dict], search: str) -> str:
    """The search: a row per trial in the order it ran (the best marked) and its objective by trial."""
    knobs = list(dict.fromkeys(name for trial in trials for name in trial["values"]))
    rows = [[f"<b>{html.escape(t['trial_id'])} (best)</b>" if t["best"] else html.escape(t["trial_id"]),
             f"<span class='{'good' if t['status'] == 'COMPLETED' else 'bad'}'>{html.escape(t['status'])}</span>",
             _number(t["objective"], 4), _number(t.get("val_accuracy")), f"{t['epochs']} of {t['epoch_budget']}",
             f"{t['seconds']:.0f}",
             *[html.escape(str(t["values"].get(name, ""))) for name in knobs],
             html.escape(t["error"])] for t in trials]
    completed = sum(t["status"] == "COMPLETED" for t in trials)
    return (f"<h3>Tuner search: {len(trials)} trials, {completed} completed, "
            f"{sum(t['seconds'] for t in trials):.0f} s</h3>"
            f"<p>{html.escape(search)}. The Trainer trained with the best trial's values (the lowest val_loss "
            "of any epoch).</p>"
            + _table(["trial", "status", "val_loss", "val_accuracy", "epochs", "s", *knobs, "error"], rows)
            + f"<figure>{_trials_chart(trials)}<figcaption>val_loss by trial, in the order they ran (the best in "
            "red; a trial that did not complete is a cross at the top)</figcaption></figure>")


def _trials_chart(trials: List[dict], width=420, height=220) -> str:
    scores = [t["objective"] for t in trials if t["objective"] is not None]
    low, high = (min(scores), max(scores)) if scores else (0.0, 1.0)
    span = (high - low) or 1.0
    step = (width - 60) / max(len(trials) - 1, 1)
    marks = []
    for i, trial in enumerate(trials):
        x = 40 + i * step
        if trial["objective"] is None:
            marks.append(f"<text x='{x - 4:.1f}' y='36' fill='#b00' font-size='14'>&#215;</text>")
            continue
        y = height - 30 - (trial["objective"] - low) / span * (height - 74)
        colour = "#d62728" if trial["best"] else "#1f77b4"
        marks.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{6 if trial['best'] else 4}' fill='{colour}'>"
                     f"<title>trial {html.escape(trial['trial_id'])}: {trial['objective']:.4f}</title></circle>")
    return (f"<svg width='{width}' height='{height}' role='img' aria-label='val_loss by trial'>"
            f"<rect x='40' y='20' width='{width - 60}' height='{height - 50}' fill='none' stroke='#999'/>"
            f"<text x='2' y='44' font-size='11'>{high:.3f}</text><text x='2' y='{height - 30}' font-size='11'>"
            f"{low:.3f}</text><text x='{width / 2 - 10}' y='{height - 8}' font-size='11'>trial</text>"
            f"{''.join(marks)}</svg>")


def _evaluation_section(numbers: dict) -> str:
    counts = np.array(numbers["confusion"])
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    confusion_rows = [[f"<b>{name}</b>", *[f"{counts[i, j]} ({normalised[i, j]:.2f})" for j in range(len(LABELS))]]
                      for i, name in enumerate(LABELS)]
    per_class = [[r["class"], r["support"], _interval(r["precision"], r["precision_ci"]),
                  _interval(r["recall"], r["recall_ci"]), _interval(r["specificity"], r["specificity_ci"]),
                  _interval(r["f1"], r["f1_ci"]), _interval(r["auc"], r["auc_ci"])] for r in numbers["per_class"]]
    sources = [[html.escape(s), v["count"], _interval(v["accuracy"], v["accuracy_ci"])]
               for s, v in numbers["by_source"].items()]
    acquisitions = [[html.escape(s), v["count"], _interval(v["accuracy"], v["accuracy_ci"])]
                    for s, v in numbers["by_acquisition"].items()]
    confound = numbers["source_confound"]
    gate = ("BLESSED" if numbers["blessed"] else "NOT BLESSED" if numbers["blessed"] is False else "not evaluated")
    thresholds = numbers["gate"]
    failures = ((f"<li>thresholds: accuracy >= {thresholds['min_accuracy']}, every class's recall (probability "
                 f"> 0.5) >= {thresholds['min_class_recall']}, at most {thresholds['max_accuracy_regression']} "
                 "below the blessed baseline</li>" if "min_accuracy" in thresholds else "")
                + "".join(f"<li class='bad'>failed: {html.escape(f)}</li>" for f in numbers["failed_thresholds"]))
    return (f"<h2>Evaluation on the test split</h2><p>{numbers['test_examples']} examples, accuracy "
            f"<b>{_interval(numbers['accuracy'], numbers['accuracy_ci'])}</b> (TFMA: "
            f"{_number(numbers['tfma_accuracy'])}). Gate: <b>{gate}</b></p><ul>{failures}</ul>"
            "<h3>Confusion matrix (rows: truth; counts and row share)</h3>"
            + _table(["truth \\ predicted", *LABELS], confusion_rows)
            + "<h3>Per class, with 95 % intervals (Wilson; bootstrap for F1 and AUC)</h3>"
            + _table(["class", "n", "precision", "recall (sensitivity)", "specificity", "F1", "AUC"], per_class)
            + "<h3>By source</h3>" + _table(["source", "n", "accuracy"], sources)
            + "<h3>By source and acquisition</h3><p>View position and modality as each image's DICOM header or "
            "its dataset's label file states them: AP films are taken of the sicker patients, a known shortcut."
            "</p>" + _table(["source: view position, modality", "n", "accuracy"], acquisitions)
            + f"<h3>Source confound</h3><p>Predicting each source's majority label "
            f"({html.escape(', '.join(f'{s}: {LABELS[k]}' for s, k in confound['majority_label'].items()))}) "
            f"is right for <b>{_number(confound['accuracy'])}</b> of the test split; the model: "
            f"<b>{_number(numbers['accuracy'])}</b>. The closer the two, the more the source alone explains.</p>"
            + f"<h3>Calibration</h3><figure>{_reliability_chart(numbers['calibration']['bins'])}<figcaption>"
            f"reliability of the top-class probability; ECE {_number(numbers['calibration']['ece'])}"
            "</figcaption></figure>")


def _gallery_section(gallery: List[dict]) -> str:
    figures = "".join(
        f"<figure><img src='{g['src']}' alt='{html.escape(g['file'])}'><figcaption>"
        f"<span class='{'good' if g['label'] == g['predicted'] else 'bad'}'>{g['label']} &rarr; {g['predicted']}"
        f"</span> ({g['probability']:.2f})<br>{html.escape(os.path.basename(g['file']))}</figcaption></figure>"
        for g in sorted(gallery, key=lambda g: (g["label"], g["label"] != g["predicted"])))
    return f"<h2>Grad-CAM gallery (correct and wrong test images per class)</h2><div class='gallery'>{figures}</div>"


def _line_chart(series: Dict[str, List[float]], metric: str, width=420, height=220) -> str:
    values = [v for points in series.values() for v in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    longest = max(len(points) for points in series.values())
    colours = {"train": "#1f77b4", "validation": "#d62728"}
    lines = []
    for phase, points in series.items():
        if points:
            xy = " ".join(f"{40 + i * (width - 60) / max(longest - 1, 1):.1f},"
                          f"{height - 30 - (v - low) / span * (height - 50):.1f}" for i, v in enumerate(points))
            lines.append(f"<polyline fill='none' stroke='{colours[phase]}' stroke-width='2' points='{xy}'/>"
                         f"<text x='{width - 90}' y='{20 + 14 * len(lines)}' fill='{colours[phase]}' "
                         f"font-size='12'>{phase}</text>")
    return (f"<svg width='{width}' height='{height}' role='img' aria-label='{metric}'>"
            f"<rect x='40' y='20' width='{width - 60}' height='{height - 50}' fill='none' stroke='#999'/>"
            f"<text x='2' y='24' font-size='11'>{high:.2f}</text><text x='2' y='{height - 30}' font-size='11'>"
            f"{low:.2f}</text><text x='{width / 2}' y='{height - 8}' font-size='11'>epoch</text>{''.join(lines)}</svg>")


def _reliability_chart(bins: List[dict], size=260) -> str:
    inner = size - 50
    bars = "".join(
        f"<rect x='{40 + b['low'] * inner:.1f}' y='{10 + (1 - b['accuracy']) * inner:.1f}' "
        f"width='{(b['high'] - b['low']) * inner - 2:.1f}' height='{b['accuracy'] * inner:.1f}' fill='#1f77b4'/>"
        for b in bins)
    return (f"<svg width='{size}' height='{size}' role='img' aria-label='reliability diagram'>"
            f"<rect x='40' y='10' width='{inner}' height='{inner}' fill='none' stroke='#999'/>{bars}"
            f"<line x1='40' y1='{10 + inner}' x2='{40 + inner}' y2='10' stroke='#d62728' stroke-dasharray='4'/>"
            f"<text x='{size / 2 - 30}' y='{size - 10}' font-size='11'>confidence</text>"
            f"<text x='0' y='20' font-size='11'>acc.</text></svg>")

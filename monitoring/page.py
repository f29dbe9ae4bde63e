"""index.html of cxr monitor, in the run report's style: the verdict per window, each feature's distance
to training across windows, and the most outlying images with their Grad-CAM. Opens from disk."""
import base64
import html
import io
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from cxr import html_page
from cxr.monitoring import compare
from cxr.serving.overlay import overlay

TREND_TITLES = {compare.SKEW: "Against training (skew)",
                compare.ANSWERS: "The model's answers against its answers on the test split (ServingCheck)",
                compare.DRIFT: "Against the window before (drift)"}

Shown = Dict[str, Tuple[bytes, Optional[np.ndarray]]]  # sha256 -> the image and its Grad-CAM heatmap


def render(result: dict, shown: Shown) -> str:
    windows = result["windows"]
    verdict = ("<p class='bad'>Alarm: at least one window differs from training or from the window before.</p>"
               if result["alarm"] else "<p class='good'>No alarm.</p>")
    sections = [f"<h1>Monitoring {html.escape(result['logs'])}</h1>", verdict, _windows_table(windows),
                *(_trend_table(windows, check) for check in TREND_TITLES),
                _outliers(windows, shown)]
    return html_page.page("cxr monitor", "".join(sections))


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _windows_table(windows: List[dict]) -> str:
    rows = []
    for w in windows:
        alarms = [f"{f['check']} {f['feature']}" for f in w["findings"] if f["alarm"]]
        state = ("<span class='muted'>" + html.escape(w.get("too_small") or "no requests") + "</span>"
                 if not w["judged"] else
                 f"<span class='bad'>{html.escape(', '.join(alarms))}</span>" if w["alarm"] else
                 "<span class='good'>as in training</span>")
        rows.append(f"<tr><td>{w['version']}</td><td>{_when(w['start'])}</td><td>{_when(w['end'])}</td>"
                    f"<td>{_count(w)}</td><td style='text-align:left'>{state}</td></tr>")
    return ("<h2>Windows</h2><table><tr><th>version</th><th>from (UTC)</th><th>to</th><th>images</th>"
            f"<th>verdict</th></tr>{''.join(rows)}</table>")


def _count(window: dict) -> str:
    """Logged images, and the sample judged when the window held more than monitoring.max_window_images."""
    sampled = window.get("sampled", window["images"])
    return str(window["images"]) if sampled == window["images"] else f"{window['images']} ({sampled} judged, a sample)"


def _trend_table(windows: List[dict], check: str) -> str:
    """One row per feature, one column per window: the distance, red where it passes its threshold."""
    features = sorted({f["feature"] for w in windows for f in w["findings"] if f["check"] == check})
    if not features:
        return ""
    header = "".join(f"<th>{_when(w['start'])[11:]}</th>" for w in windows)
    rows = []
    for name in features:
        cells = []
        for w in windows:
            found = [f for f in w["findings"] if f["check"] == check and f["feature"] == name]
            cells.append("<td class='muted'>-</td>" if not found else
                         f"<td class='{'bad' if found[0]['alarm'] else ''}'>{found[0]['distance']:.3f}</td>")
        threshold = next(f["threshold"] for w in windows for f in w["findings"]
                         if f["check"] == check and f["feature"] == name)
        rows.append(f"<tr><th style='text-align:left'>{html.escape(name)}</th><td>{threshold:g}</td>{''.join(cells)}</tr>")
    return f"<h2>{TREND_TITLES[check]}</h2><table><tr><th>feature</th><th>threshold</th>{header}</tr>{''.join(rows)}</table>"


def _outliers(windows: List[dict], shown: Shown) -> str:
    figures = []
    for w in windows:
        for outlier in w["outliers"]:
            if outlier["sha256"] not in shown:
                continue
            image, heatmap = shown[outlier["sha256"]]
            picture = overlay(image, heatmap) if heatmap is not None else Image.open(io.BytesIO(image)).convert("RGB")
            png = io.BytesIO()
            picture.save(png, format="PNG")
            figures.append(f"<figure><img src='data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}'>"
                           f"<figcaption>{_when(w['start'])[11:]} &middot; {html.escape(outlier['predicted_class'])} "
                           f"{outlier['top_probability']:.2f}<br>distance {outlier['distance']:.1f}</figcaption></figure>")
    return "<h2>Most outlying images (Grad-CAM of the predicted class)</h2>" + ("".join(figures) or "<p>none</p>")


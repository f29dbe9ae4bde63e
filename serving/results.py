"""What `cxr predict` shows and writes: a table of answers per file, JSON, and Grad-CAM overlays."""
import json
import os
from typing import Dict, Mapping, Sequence

from cxr.serving import contract
from cxr.serving.client import ImageResult, class_probabilities
from cxr.serving.overlay import overlay


def format_table(results: Sequence[ImageResult]) -> str:
    width = max([len("file")] + [len(os.path.basename(result.path)) for result in results])
    header = [f"{'file':<{width}}", f"{'class':<19}"] + [f"{name:>19}" for name in contract.CLASS_NAMES]
    lines = ["  ".join(header)]
    for result in results:
        name = f"{os.path.basename(result.path):<{width}}"
        if result.error:
            lines.append(f"{name}  error: {result.error}")
            continue
        probabilities = class_probabilities(result.outputs)
        lines.append("  ".join([name, f"{result.outputs[contract.CLASS_NAME]:<19}"] +
                               [f"{probabilities[label]:>19.3f}" for label in contract.CLASS_NAMES]))
    return "\n".join(lines)


def to_json(results: Sequence[ImageResult], overlays: Mapping[str, str]) -> str:
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


def write_overlays(explained: Sequence[ImageResult], out_dir: str) -> Dict[str, str]:
    """<out_dir>/<file stem>_gradcam.png for each explained file, keyed by the image's path."""
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for result in explained:
        if result.error:
            continue
        with open(result.path, "rb") as f:
            picture = overlay(f.read(), result.outputs[contract.HEATMAP])
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(result.path))[0] + "_gradcam.png")
        picture.save(path)
        written[result.path] = path
    return written

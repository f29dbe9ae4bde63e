"""What `cxr predict` shows and writes: a table of answers per file, JSON, and Grad-CAM overlays."""
import json
import os
from typing import Dict, Mapping, Sequence

from cxr import contract
from cxr.serving.client import ImageResult, class_probabilities
from cxr.serving.overlay import overlay


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


def format_table(results: Sequence[ImageResult]) -> str:
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
    """<out_dir>/<file stem>_gradcam.png for each explained file, keyed by the image's path; files of the
    same name from different folders get their folders in the name (a__COVID-1_gradcam.png)."""
    os.makedirs(out_dir, exist_ok=True)
    names = unique_names([result.path for result in explained])
    written = {}
    for result in explained:
        if result.error:
            continue
        with open(result.path, "rb") as f:
            picture = overlay(f.read(), result.outputs[contract.HEATMAP])
        path = os.path.join(out_dir, os.path.splitext(names[result.path])[0].replace("/", "__") + "_gradcam.png")
        picture.save(path)
        written[result.path] = path
    return written

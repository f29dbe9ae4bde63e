"""What `cxr predict` writes: Grad-CAM overlays, named apart (its table and JSON: cxr/output.py)."""
import os
from typing import Dict, Sequence

from cxr import contract
from cxr.output import unique_names
from cxr.serving.client import ImageResult
from cxr.serving.overlay import overlay


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

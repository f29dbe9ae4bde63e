"""Which dataset classes become which of the four labels.

Folder-based sources map their class folder names (case-insensitively, so the
older releases' `NORMAL` matches `Normal`). NIH maps its `Finding Labels`: by
default an image maps only when it has exactly one finding and that finding is
mapped; `nih_multilabel` also admits images whose findings map to exactly one
label (e.g. `Effusion|Pneumothorax` -> PNEUMOTHORAX).
"""
import dataclasses
import os
from typing import Dict, Mapping, Optional

import yaml

from cxr.contract import LABELS, NIH, SOURCES

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "mappings")
PRESET_NAMES = ("study", "multi-source")


class MappingError(ValueError):
    """A mapping file that does not say what a mapping must."""


@dataclasses.dataclass(frozen=True)
class ClassMapping:
    name: str
    by_source: Mapping[str, Mapping[str, str]]
    nih_multilabel: bool = False

    @classmethod
    def study(cls) -> "ClassMapping":
        return cls.load(os.path.join(PRESETS_DIR, "study.yaml"))

    @classmethod
    def multi_source(cls) -> "ClassMapping":
        return cls.load(os.path.join(PRESETS_DIR, "multi-source.yaml"))

    @classmethod
    def from_name_or_file(cls, name_or_path: str) -> "ClassMapping":
        if name_or_path in PRESET_NAMES:
            return cls.load(os.path.join(PRESETS_DIR, f"{name_or_path}.yaml"))
        return cls.load(name_or_path)

    @classmethod
    def load(cls, path: str) -> "ClassMapping":
        try:
            with open(path, encoding="utf-8") as f:
                document = yaml.safe_load(f)
        except OSError as error:
            raise MappingError(f"cannot read mapping file {path}: {error.strerror}") from error
        except yaml.YAMLError as error:
            raise MappingError(f"mapping file {path} is not valid YAML: {error}") from error
        return cls.from_dict(document, origin=path)

    @classmethod
    def from_dict(cls, document, origin: str) -> "ClassMapping":
        if not isinstance(document, dict) or not isinstance(document.get("sources"), dict):
            raise MappingError(f"{origin}: expected a mapping with a 'sources' table "
                               f"(source -> {{dataset class: label}})")
        by_source = {}
        for source, table in document["sources"].items():
            by_source[source] = _checked_table(origin, source, table)
        return cls(
            name=str(document.get("name", os.path.splitext(os.path.basename(origin))[0])),
            by_source=by_source,
            nih_multilabel=bool(document.get("nih_multilabel", False)),
        )

    def with_nih_multilabel(self, enabled: bool) -> "ClassMapping":
        return dataclasses.replace(self, nih_multilabel=enabled)

    def label_for(self, source: str, raw_class: str) -> Optional[str]:
        table = self._folded(source)
        if source != NIH:
            return table.get(raw_class.casefold())
        findings = [finding.strip() for finding in raw_class.split("|") if finding.strip()]
        if len(findings) == 1:
            return table.get(findings[0].casefold())
        if not self.nih_multilabel:
            return None
        labels = {table[f.casefold()] for f in findings if f.casefold() in table}
        return labels.pop() if len(labels) == 1 else None

    def _folded(self, source: str) -> Dict[str, str]:
        return {raw.casefold(): label for raw, label in self.by_source.get(source, {}).items()}


def _checked_table(origin: str, source, table) -> Dict[str, str]:
    if source not in SOURCES:
        raise MappingError(f"{origin}: unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if not isinstance(table, dict):
        raise MappingError(f"{origin}: sources.{source} must map dataset classes to labels")
    for raw_class, label in table.items():
        if label not in LABELS:
            raise MappingError(f"{origin}: sources.{source}.{raw_class} is {label!r}; "
                               f"expected one of {', '.join(LABELS)}")
    return {str(raw): label for raw, label in table.items()}

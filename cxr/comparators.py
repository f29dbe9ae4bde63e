"""TFDV's comparators, set the one way the drift check (components/drift.py) and the monitor
(monitoring/compare.py) both set them: L-infinity distance on a categorical feature, Jensen-Shannon
divergence on a numeric one; `skew` compares with the training split, `drift` with the previous span or
window. Imports nothing: each caller hands its schema's feature proto."""

SKEW, DRIFT = "skew", "drift"
_KINDS = (SKEW, DRIFT)


def set_comparator(feature, kind: str, categorical: bool, threshold: float) -> None:
    """Puts a `kind` comparator with this threshold on `feature` (a tensorflow_metadata schema Feature)."""
    if kind not in _KINDS:
        raise ValueError(f"comparator kind {kind!r}: expected one of {', '.join(_KINDS)}")
    comparator = getattr(feature, f"{kind}_comparator")
    if categorical:
        comparator.infinity_norm.threshold = threshold
    else:
        comparator.jensen_shannon_divergence.threshold = threshold


def is_comparator_finding(type_name: str) -> bool:
    """Whether an AnomalyInfo reason's type (its enum name) is a comparator's, not a schema violation's."""
    return type_name.startswith("COMPARATOR_")

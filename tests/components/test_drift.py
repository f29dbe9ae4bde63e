"""DriftCheck's comparison: TFDV's L-infinity and Jensen-Shannon comparators on two spans' statistics."""
import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from cxr.components.drift import describe_drift, drift_anomalies, drift_schema

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "pipeline", "schema", "schema.pbtxt")


def _span(counts, height=1024, jpeg_share=0.0, ap_share=0.2, new_scanner_share=0.0):
    """Statistics of a span with `counts` images per label, all `height` px square."""
    rows = []
    for label, count in counts.items():
        for i in range(count):
            jpeg = i < count * jpeg_share
            new_scanner = i >= count * (1 - new_scanner_share)
            rows.append({"label": label, "source": "nih" if label == "PNEUMOTHORAX" else "covid_radiography",
                         "format": "jpeg" if jpeg else "png", "height": height + i % 7, "width": height + i % 5,
                         "channels": 1, "bit_depth": 8, "view_position": "AP" if i < count * ap_share else "PA",
                         "modality": "CR" if new_scanner else "DX", "bits_stored": 12,
                         "manufacturer": "Other Corp" if new_scanner else "Phantom Imaging",
                         "manufacturer_model": "Z-9" if new_scanner else "PX-100", "photometric_interpretation": "MONOCHROME2"})
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def schema():
    return drift_schema(tfdv.load_schema_text(SCHEMA), categorical_threshold=0.1, numeric_threshold=0.1)


BALANCED = {"BACTERIAL_PNEUMONIA": 100, "COVID": 100, "NORMAL": 100, "PNEUMOTHORAX": 100}


def test_the_same_mix_twice_is_no_drift(schema):
    assert describe_drift(drift_anomalies(_span(BALANCED), _span(BALANCED), schema)) == []


def test_a_class_that_stops_arriving_is_label_drift_by_l_infinity(schema):
    shifted = dict(BALANCED, COVID=10)
    lines = describe_drift(drift_anomalies(_span(shifted), _span(BALANCED), schema))
    assert any(line.startswith("label:") and "Linfty distance" in line and "COVID" in line for line in lines), lines


def test_another_scanner_size_is_drift_by_jensen_shannon(schema):
    lines = describe_drift(drift_anomalies(_span(BALANCED, height=299), _span(BALANCED), schema))
    assert {line.split(":")[0] for line in lines} >= {"height", "width"}
    assert all("Jensen-Shannon" in line for line in lines if line.startswith(("height", "width")))


def test_a_flood_of_ap_films_and_a_new_scanner_are_drift(schema):
    lines = describe_drift(drift_anomalies(_span(BALANCED, ap_share=0.7), _span(BALANCED), schema))
    assert any(line.startswith("view_position:") and "Linfty distance" in line and "is 0.5" in line for line in lines), lines
    lines = describe_drift(drift_anomalies(_span(BALANCED, new_scanner_share=0.3), _span(BALANCED), schema))
    assert {line.split(":")[0] for line in lines} >= {"modality", "manufacturer", "manufacturer_model"}, lines


def test_schema_anomalies_are_left_to_the_example_validator(schema):
    # An unknown label value is a schema anomaly, not drift.
    unknown = {"BACTERIAL_PNEUMONIA": 100, "COVID": 100, "NORMAL": 100, "PNEUMOTHORAX": 99, "VIRAL": 1}
    lines = describe_drift(drift_anomalies(_span(unknown), _span(BALANCED), schema))
    assert not [line for line in lines if "VIRAL" in line]


def test_every_compared_feature_gets_its_comparator(schema):
    assert tfdv.get_feature(schema, "label").drift_comparator.infinity_norm.threshold == 0.1
    assert tfdv.get_feature(schema, "format").drift_comparator.infinity_norm.threshold == 0.1
    assert tfdv.get_feature(schema, "bit_depth").drift_comparator.jensen_shannon_divergence.threshold == 0.1

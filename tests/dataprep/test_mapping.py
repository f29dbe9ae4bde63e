import pytest

from cxr.dataprep.mapping import ClassMapping, MappingError


def test_study_takes_each_class_from_one_source():
    study = ClassMapping.study()
    assert study.label_for("covid_radiography", "COVID") == "COVID"
    assert study.label_for("covid_radiography", "Normal") == "NORMAL"
    assert study.label_for("curated", "Pneumonia-Bacterial") == "BACTERIAL_PNEUMONIA"
    assert study.label_for("nih", "Pneumothorax") == "PNEUMOTHORAX"
    assert study.label_for("curated", "Normal") is None
    assert study.label_for("curated", "COVID-19") is None
    assert study.label_for("nih", "No Finding") is None


def test_multi_source_draws_normal_from_all_three_and_covid_from_two():
    multi = ClassMapping.from_name_or_file("multi-source")
    assert {multi.label_for(s, c) for s, c in [("covid_radiography", "Normal"), ("curated", "Normal"),
                                               ("nih", "No Finding")]} == {"NORMAL"}
    assert multi.label_for("curated", "COVID-19") == multi.label_for("covid_radiography", "COVID") == "COVID"
    assert multi.label_for("covid_radiography", "Lung_Opacity") is None
    assert multi.label_for("curated", "Pneumonia-Viral") is None


def test_folder_names_match_case_insensitively():
    assert ClassMapping.study().label_for("covid_radiography", "NORMAL") == "NORMAL"


def test_nih_needs_a_sole_finding_unless_multilabel_is_on():
    mapping = ClassMapping.study()
    assert mapping.label_for("nih", "Effusion|Pneumothorax") is None
    multilabel = mapping.with_nih_multilabel(True)
    assert multilabel.label_for("nih", "Effusion|Pneumothorax") == "PNEUMOTHORAX"
    assert multilabel.label_for("nih", "Effusion|Infiltration") is None


def test_multilabel_rejects_findings_that_map_to_two_labels(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("nih_multilabel: true\nsources:\n  nih:\n    Pneumothorax: PNEUMOTHORAX\n"
                    "    Pneumonia: BACTERIAL_PNEUMONIA\n")
    assert ClassMapping.load(str(path)).label_for("nih", "Pneumonia|Pneumothorax") is None


def test_a_yaml_file_can_define_any_mapping(tmp_path):
    path = tmp_path / "viral-as-covid.yaml"
    path.write_text("sources:\n  curated:\n    Pneumonia-Viral: COVID\n")
    mapping = ClassMapping.from_name_or_file(str(path))
    assert mapping.name == "viral-as-covid"
    assert mapping.label_for("curated", "Pneumonia-Viral") == "COVID"


@pytest.mark.parametrize("text, message", [
    ("sources:\n  curated:\n    Normal: HEALTHY\n", r"sources.curated.Normal is 'HEALTHY'; expected one of"),
    ("sources:\n  kaggle:\n    Normal: NORMAL\n", r"unknown source 'kaggle'"),
    ("labels: []\n", r"expected a mapping with a 'sources' table"),
    ("sources: [unclosed\n", r"is not valid YAML"),
])
def test_bad_mapping_files_say_what_is_wrong_and_where(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MappingError, match=message) as error:
        ClassMapping.load(str(path))
    assert "bad.yaml" in str(error.value)

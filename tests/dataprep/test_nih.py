import pytest

from cxr.dataprep import nih

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def _csv(tmp_path, text, name="Data_Entry_2017.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_rows_parse_with_the_real_header_and_trailing_comma(tmp_path):
    path = _csv(tmp_path, HEADER + "00000013_005.png,Emphysema|Infiltration|Pneumothorax,5,00013,60,M,AP,"
                                   "3056,2544,0.139,0.139,\n")
    [row] = list(nih.read_rows(path))
    assert row.image_index == "00000013_005.png"
    assert row.finding_labels == "Emphysema|Infiltration|Pneumothorax"
    assert row.patient_id == "nih:13" and row.view_position == "AP"


def test_missing_columns_are_named_with_the_file(tmp_path):
    path = _csv(tmp_path, "Image Index,Labels\nx.png,No Finding\n")
    with pytest.raises(nih.NihCsvError, match=r"Data_Entry_2017.csv: missing column\(s\) 'Finding Labels', 'Patient ID'"):
        list(nih.read_rows(path))


def test_a_row_without_patient_is_an_error_with_its_line(tmp_path):
    path = _csv(tmp_path, HEADER + "a.png,No Finding,0,1,1,M,PA,1,1,1,1,\nb.png,No Finding,0,,1,M,PA,1,1,1,1,\n")
    with pytest.raises(nih.NihCsvError, match="line 3"):
        list(nih.read_rows(path))


def test_the_v2020_label_file_is_preferred(tmp_path):
    _csv(tmp_path, HEADER, "Data_Entry_2017.csv")
    (tmp_path / "sub").mkdir()
    preferred = _csv(tmp_path / "sub", HEADER, "Data_Entry_2017_v2020.csv")
    assert nih.find_csv(str(tmp_path)) == preferred


def test_no_label_file_is_a_clear_error(tmp_path):
    with pytest.raises(nih.NihCsvError, match="no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv"):
        nih.find_csv(str(tmp_path))

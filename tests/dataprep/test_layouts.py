from cxr.dataprep import layouts


def test_class_is_the_folder_above_images_or_the_parent():
    assert layouts.folder_class_of("COVID-19_Radiography_Dataset/COVID/images/COVID-1.png") == "COVID"
    assert layouts.folder_class_of("COVID-19 Radiography Database/NORMAL/NORMAL (1).png") == "NORMAL"
    assert layouts.folder_class_of("Viral Pneumonia/Viral Pneumonia (7).PNG") == "Viral Pneumonia"
    assert layouts.folder_class_of("stray.png") == layouts.NO_CLASS_FOLDER


def test_download_debris_is_ignored_with_a_reason():
    assert layouts.ignore_reason("ds/COVID/masks/COVID-1.png") == "masks/"
    assert layouts.ignore_reason("__MACOSX/ds/COVID/images/._COVID-1.png") == "__MACOSX/"
    assert layouts.ignore_reason("ds/COVID.metadata.XLSX") == "*.xlsx"
    assert layouts.ignore_reason("ds/Normal/images/.DS_Store") == ".DS_Store"
    assert layouts.ignore_reason("ds/Normal/images/Thumbs.db") == "Thumbs.db"
    assert layouts.ignore_reason("ds/.git/objects/ab") == "hidden folder"


def test_image_files_with_spaces_parentheses_and_capitals_are_kept():
    for relpath in ("Curated X-Ray Dataset/Pneumonia-Bacterial/Pneumonia-Bacterial (123).jpg",
                    "ds/COVID/images/COVID-2.PNG", "ds/Normal/Normal (1).JPEG"):
        assert layouts.ignore_reason(relpath) is None, relpath


def test_seen_file_ids_come_from_the_file_name():
    seen = layouts.folder_labelled_file("curated", "/d/Normal/Normal (3).jpg", "Normal/Normal (3).jpg", 10)
    assert (seen.raw_class, seen.image_id, seen.patient_id) == ("Normal", "Normal (3)", "curated:Normal (3)")


def test_nih_images_live_in_an_images_folder():
    assert layouts.is_nih_image_path("images_001/images/00000001_000.png")
    assert not layouts.is_nih_image_path("Data_Entry_2017.csv")
    assert not layouts.is_nih_image_path("images_001/00000001_000.png")


def test_relative_path_uses_forward_slashes():
    assert layouts.relative_path("/data/nih/", "/data/nih/images_001/images/x.png") == "images_001/images/x.png"

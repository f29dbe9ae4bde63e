"""The node's answer: a DICOM Comprehensive SR (highdicom) of one image's result, and the reading of one.

The content follows TID 1500 (Measurement Report), one TID 1501 group per finding of the model:
- the finding (SNOMED CT) as the group's Finding Type, its probability as a NUM (DCM 122157 "Probability",
  UCUM "1"), the predicted one's group also a qualitative evaluation (DCM 121077 "Conclusion": the finding);
- the algorithm (TID 4019: the model's name, the served version that answered) in every group, and the
  node as the observer device (TID 1004: the node's UID and AE title, the model and version as its model
  name), as IHE's AI Results profile asks: the report says which model version said what;
- the source image by its SOP Class and Instance UID (the image library and each group's source image).

The report is filed under the source image's patient and study (highdicom copies the patient and study
modules from it), in one series per study for the node, Verification Flag UNVERIFIED, completion
PARTIAL, and says "not for diagnostic use" in its series description and in a comment item. Its UIDs
follow from the source image, the node and the model version, so an answer sent again after a crash
replaces the first in the PACS instead of doubling it.
"""
from typing import Dict, NamedTuple

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr import contract

NOT_FOR_DIAGNOSIS = ("Not for diagnostic use: a research model's output, not verified by a physician "
                     "(cxr-pipeline).")
SERIES_DESCRIPTION = "cxr AI result - not for diagnostic use"
SERIES_NUMBER = 9901
GRAD_CAM_SERIES_DESCRIPTION = "cxr Grad-CAM - not for diagnostic use"
GRAD_CAM_SERIES_NUMBER = 9902
# Where the image states none: a frontal chest film as it is displayed (the patient's left to the right of
# the image, the feet down), PS3.3 C.7.6.1.1.1.
DISPLAYED_FRONTAL_ORIENTATION = ("L", "F")
MANUFACTURER = "cxr-pipeline"
# The model's classes (cxr/contract.py LABELS) as SNOMED CT findings.
FINDINGS = {
    "BACTERIAL_PNEUMONIA": hd.sr.CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "COVID": hd.sr.CodedConcept("840539006", "SCT", "COVID-19"),  # the meaning at most 64 characters
    "NORMAL": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "PNEUMOTHORAX": hd.sr.CodedConcept("36118008", "SCT", "Pneumothorax"),
}
_LABEL_OF_CODE = {concept.value: label for label, concept in FINDINGS.items()}
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
assert tuple(FINDINGS) == contract.LABELS


class Identity(NamedTuple):
    """Who answered: the node (its device UID, AE title) and the model version that computed the result."""
    device_uid: str
    ae_title: str
    model_name: str
    model_version: int


def device_uid(ae_title: str) -> str:
    """The node's Device Observer UID: the same for the same AE title, across restarts and replicas."""
    return generate_uid(prefix=None, entropy_srcs=["cxr dicom-node", ae_title])


def structured_report(source: pydicom.Dataset, probabilities: Dict[str, float], identity: Identity) -> pydicom.Dataset:
    """The SR answering `source` (a received image's dataset; its pixels are not needed)."""
    missing = [label for label in contract.LABELS if label not in probabilities]
    if missing:
        raise ValueError(f"the model's answer lacks the probabilities of {', '.join(missing)}")
    predicted = max(contract.LABELS, key=lambda label: probabilities[label])
    source = _with_type2_attributes(source)
    algorithm = hd.sr.AlgorithmIdentification(name=identity.model_name, version=str(identity.model_version),
                                              manufacturer=MANUFACTURER)
    source_image = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID)
    groups = []
    for label in contract.LABELS:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(prefix=None, entropy_srcs=[source.SOPInstanceUID, identity.device_uid, label]),
                identifier=f"cxr {label.lower()}"),
            finding_type=FINDINGS[label],
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(probabilities[label]),
                                            unit=_UNIT)],  # the group's algorithm covers it
            qualitative_evaluations=([hd.sr.QualitativeEvaluation(name=codes.DCM.Conclusion, value=FINDINGS[label])]
                                     if label == predicted else None),
            source_images=[source_image]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid, name=identity.ae_title, manufacturer_name=MANUFACTURER,
            model_name=f"{identity.model_name} version {identity.model_version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups)  # no image library: it needs Imager Pixel Spacing, which real CRs lack (RG1)
    report[0].ContentSequence.append(hd.sr.TextContentItem(
        name=_COMMENT, value=NOT_FOR_DIAGNOSIS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(prefix=None, entropy_srcs=[source.StudyInstanceUID, identity.device_uid]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(prefix=None, entropy_srcs=[source.SOPInstanceUID, identity.device_uid,
                                                                 identity.model_name, str(identity.model_version)]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION)
    return sr


# What highdicom copies from the source image into the report: type 1 (must be there), type 2 (may be empty,
# as real images often leave them: then the report has them empty too). PS3.3 C.7.1.1, C.7.2.1, C.12.1.
_TYPE1 = {"SOPClassUID": "(0008,0016) SOP Class UID", "SOPInstanceUID": "(0008,0018) SOP Instance UID",
          "StudyInstanceUID": "(0020,000D) Study Instance UID"}
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def _with_type2_attributes(source: pydicom.Dataset) -> pydicom.Dataset:
    missing = [tag for keyword, tag in _TYPE1.items() if not str(source.get(keyword, "")).strip()]
    if missing:
        raise ValueError(f"the image has no {', '.join(missing)}: a report cannot reference it")
    absent = [keyword for keyword in _TYPE2 if keyword not in source]
    if not absent:
        return source
    header = pydicom.Dataset(source)  # a shallow copy: the received dataset stays as it was
    for keyword in absent:
        setattr(header, keyword, "")
    return header


def grad_cam_capture(source: pydicom.Dataset, overlay_rgb: np.ndarray, identity: Identity) -> pydicom.Dataset:
    """A Secondary Capture (highdicom) of the Grad-CAM overlay, in the source image's study, its own series."""
    source = _with_type2_attributes(source)
    orientation = tuple(str(v) for v in source.get("PatientOrientation", []) or ())
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(overlay_rgb, dtype=np.uint8),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=generate_uid(prefix=None, entropy_srcs=[source.StudyInstanceUID, identity.device_uid,
                                                                    "grad-cam"]),
        series_number=GRAD_CAM_SERIES_NUMBER,
        sop_instance_uid=generate_uid(prefix=None, entropy_srcs=[source.SOPInstanceUID, identity.device_uid,
                                                                 identity.model_name, str(identity.model_version),
                                                                 "grad-cam"]),
        instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation if len(orientation) == 2 else DISPLAYED_FRONTAL_ORIENTATION)
    capture.SeriesDescription = GRAD_CAM_SERIES_DESCRIPTION
    capture.BurnedInAnnotation = "NO"
    capture.ImageComments = NOT_FOR_DIAGNOSIS
    capture.DerivationDescription = (f"Grad-CAM of {identity.model_name} version {identity.model_version} "
                                     f"over the image")
    return capture


class ReportContents(NamedTuple):
    probabilities: Dict[str, float]
    predicted: str
    model_name: str
    model_version: int
    source_sop_instance_uid: str
    verification_flag: str
    comment: str


def read_report(sr: pydicom.Dataset) -> ReportContents:
    """What a node's SR says (for the tests and for anyone checking what the PACS holds)."""
    root = sr.ContentSequence
    probabilities, predicted, algorithm, sources, comment = {}, "", {}, set(), ""
    for item in root:
        name = item.ConceptNameCodeSequence[0].CodeValue
        if name == _COMMENT.value:
            comment = item.TextValue
        if name != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            label = ""
            for entry in group.ContentSequence:
                concept = entry.ConceptNameCodeSequence[0].CodeValue
                if concept == "121077":  # Conclusion: the predicted class
                    predicted = _LABEL_OF_CODE[entry.ConceptCodeSequence[0].CodeValue]
                elif concept == "121071":  # Finding: the group's finding type (TID 1501)
                    label = _LABEL_OF_CODE[entry.ConceptCodeSequence[0].CodeValue]
                elif concept == "111001":  # Algorithm Name
                    algorithm["name"] = entry.TextValue
                elif concept == "111003":  # Algorithm Version
                    algorithm["version"] = entry.TextValue
                elif concept == "121112":  # Source of Measurement
                    sources.add(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                elif concept == codes.DCM.Probability.value:
                    measured = entry.MeasuredValueSequence[0]  # FD where highdicom wrote it, else DS
                    value = float(measured.get("FloatingPointValue", measured.NumericValue))
                    probabilities[label] = value
    if len(sources) != 1:
        raise ValueError(f"the report references {len(sources)} source images, expected one")
    return ReportContents(probabilities, predicted, algorithm.get("name", ""), int(algorithm.get("version", -1)),
                          sources.pop(), str(sr.VerificationFlag), comment)

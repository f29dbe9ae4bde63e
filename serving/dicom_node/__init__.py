"""The DICOM node (`cxr dicom-node`): a C-STORE SCP the PACS routes chest X-rays to, which answers each with a
DICOM Structured Report of the served model's result, sent back by C-STORE or STOW-RS (docs/dicom.md)."""

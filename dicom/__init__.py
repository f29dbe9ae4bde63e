"""DICOM in: a hospital's radiographs as the images the model receives (convert.py), and the keyed
pseudonyms that replace their patient identifiers (pseudonyms.py). TensorFlow-free: ingestion, the
client and the serving fronts all import it."""

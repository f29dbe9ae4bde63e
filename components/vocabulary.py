"""The closed vocabularies that records, mappings and manifests share."""

# The study's class order: class ids 0..3 are the positions in this tuple.
LABELS = ("BACTERIAL_PNEUMONIA", "COVID", "NORMAL", "PNEUMOTHORAX")

COVID_RADIOGRAPHY = "covid_radiography"
CURATED = "curated"
NIH = "nih"
SOURCES = (COVID_RADIOGRAPHY, CURATED, NIH)

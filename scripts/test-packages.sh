#!/usr/bin/env bash
# Debian's packages some tests run, installed where missing (.ci/run calls this; run it once on your machine,
# as root or with sudo, to run those tests instead of skipping them):
# - chromium renders the run report (tests/pipeline/test_pipeline_e2e.py);
# - orthanc and orthanc-dicomweb are the real PACS the DICOM node is tested against (tests/orthanc.py).
set -euo pipefail
if command -v chromium > /dev/null && command -v Orthanc > /dev/null \
    && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  exit 0
fi
sudo_if_needed=""
[ "$(id -u)" -ne 0 ] && sudo_if_needed="sudo"
$sudo_if_needed apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -q --no-install-recommends \
  chromium orthanc orthanc-dicomweb

"""Load on the DICOM node: Orthanc sends 200 images while the model server is restarted once; Orthanc holds
200 reports afterwards, one per image (tests/node_load.py; the figures: bench/dicom_node.py)."""
import pytest

import node_load
import orthanc as O

pytestmark = [pytest.mark.slow, pytest.mark.skipif(O.available() is not None, reason=str(O.available()))]


def test_200_images_while_the_model_server_restarts_give_200_reports_none_twice_none_lost(model_base_path, tmp_path):
    result = node_load.run(str(tmp_path), model_base_path, node_load.one_study(200), restart_after=60)
    assert result["store_failures"] == [], result["store_failures"]
    assert len(result["restart_s"]) == 1 and result["retries"] >= 1, result  # the restart was felt, and waited out
    assert result["missing"] == [] and result["twice"] == [] and not result["strays"], result
    assert result["reports"] == 200

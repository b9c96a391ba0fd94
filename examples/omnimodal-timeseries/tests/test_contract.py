"""The omnimodal plugin contract, run on this package's own modality (pytest tests/)."""

from omnimodal.testing import check_modality


def test_timeseries_contract(tmp_path):
    report = check_modality("timeseries", tmp_path)
    assert len(set(report.lengths)) > 1, report  # varied lengths really were checked

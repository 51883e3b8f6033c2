"""Reading result files back: a summary.csv string becomes what it was written from."""

from __future__ import annotations

from lab.experiment import rundata


def test_summary_strings_are_read_back_as_their_values() -> None:
    row = {"trial": "5", "measured_outage_s": "13.43", "errors": "2", "tlp": "True",
           "detect_s": "", "verdict": "ok: within 0.67s of the model", "x": "inf"}
    assert rundata.typed_row(row) == {
        "trial": "5", "measured_outage_s": 13.43, "errors": 2, "tlp": True, "detect_s": None,
        "verdict": "ok: within 0.67s of the model", "x": "inf"}

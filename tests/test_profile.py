"""Stage timings of fit and predict, and the torch thread setting."""

import pytest
import torch

import sthist
from sthist._core._timing import stage_times


def test_fit_and_predict_report_their_stages():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=0)
    stage_times()
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]}, backbone="tiny", max_epochs=1, batch_size=16, k=5, views=1
    )
    fit_stages = stage_times()
    for name in ("resolve sections", "normalise", "gene panel", "build encoder", "patch geometry", "encoding",
                 "training", "retrieval bank"):  # fmt: skip
        assert fit_stages[name] >= 0, name
    assert stage_times() == {}  # read and cleared
    sthist.tl.predict(sections["toy1"], model)
    assert {"resolve section", "patch geometry", "encoding", "retrieval"} <= set(stage_times())


def test_threads_setting_is_applied_and_checked(monkeypatch):
    from sthist._settings import apply_threads, available_cores

    assert sthist.settings.threads == available_cores() >= 1
    before = torch.get_num_threads()
    monkeypatch.setattr(sthist.settings, "threads", 1)
    try:
        apply_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="settings.threads must be a non-negative integer"):
        sthist.settings.threads = -1

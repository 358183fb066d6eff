"""Stage timings of fit and predict, the torch thread setting and the allocator setting."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import sthist
from sthist._core._timing import stage_times


def test_fit_and_predict_report_their_stages():
    sthist.settings.progress = False
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=0)
    stage_times()
    model = sthist.tl.fit(
        {"toy0": sections["toy0"]}, backbone="tiny", max_epochs=1, batch_size=16, k=5, training={"views": 1}
    )
    fit_stages = stage_times()
    for name in ("resolve sections", "normalise", "gene panel", "build encoder", "patch geometry", "encoding",
                 "training", "retrieval bank"):  # fmt: skip
        assert fit_stages[name] >= 0, name
    assert stage_times() == {}  # read and cleared
    sthist.tl.predict(sections["toy1"], model)
    assert {"resolve section", "patch geometry", "encoding", "retrieval"} <= set(stage_times())


def test_threads_setting_is_applied_and_checked(monkeypatch):
    from sthist._settings import apply_runtime_settings, available_cores

    assert sthist.settings.threads == available_cores() >= 1
    before = torch.get_num_threads()
    monkeypatch.setattr(sthist.settings, "threads", 1)
    try:
        apply_runtime_settings()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="settings.threads must be a non-negative integer"):
        sthist.settings.threads = -1


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)
def test_freed_memory_is_retained_while_encoding_and_handed_back_after():
    """Inside retained_memory a freed 200 MiB block stays with the process; when the block ends it is returned."""
    code = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        import sthist
        from sthist._settings import retained_memory

        def resident():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def kept_after_free():
            before = resident()
            block = np.ones(200 * 2**20 // 8)
            del block
            return resident() - before

        if sys.argv[1] == "off":
            sthist.settings.retain_freed_memory = False
        first = kept_after_free() < 50 * 2**20
        with retained_memory() as applied:
            start = resident()
            with retained_memory():  # nested (encode_patches inside predict_tiles): the outer block decides
                inner = kept_after_free() > 150 * 2**20
            still = resident() - start > 150 * 2**20
            before_exit = resident()
        handed_back = before_exit - resident() > 150 * 2**20
        after = kept_after_free() < 50 * 2**20
        # encode_patches runs its batches inside the block, and leaves it when done.
        import torch
        from sthist import _settings
        from sthist.data import SpotPatchDataset, encode_patches

        seen = []

        class Encoder(torch.nn.Module):
            def forward(self, x):
                seen.append(_settings._retaining)
                return torch.zeros(len(x), 1, 4)

        section = sthist.datasets.toy(1, grid=3, n_genes=4)["toy0"]
        encode_patches(SpotPatchDataset(section, patch_size_um=64, patch_size_px=16), Encoder(), batch_size=4)
        encoding = seen[0] == 1 and _settings._retaining == 0
        # Fine-tuning runs the encoder at every training step, inside the block; training on cached tokens not.
        import lightning

        seen.clear()
        trainer_fit = lightning.Trainer.fit

        def recording(self, *args, **kwargs):
            seen.append(_settings._retaining)
            return trainer_fit(self, *args, **kwargs)

        lightning.Trainer.fit = recording
        sthist.settings.progress = False
        for fine_tune in (True, False):
            sthist.tl.fit(
                {"toy0": section}, backbone="tiny", training={"fine_tune": fine_tune}, max_epochs=1, batch_size=4, k=2
            )
        training = seen == [1, 0]
        print(first, applied, inner, still, handed_back, after, encoding, training)
        """
    )
    clean = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    }

    def run(mode: str, **extra: str) -> str:
        command = [sys.executable, "-c", code, mode]
        return subprocess.run(
            command, env={**clean, **extra}, capture_output=True, text=True, check=True
        ).stdout

    assert run("on").split() == ["True"] * 8
    assert run("off").split() == ["True", "False", "False", "False", "False", "True", "False", "False"]
    # The environment's own setting wins: sthist leaves the allocator as it was told.
    assert run("on", MALLOC_TRIM_THRESHOLD_="0").split()[1:4] == ["False", "False", "False"]
    with pytest.raises(ValueError, match="settings.retain_freed_memory must be True or False"):
        sthist.settings.retain_freed_memory = "yes"

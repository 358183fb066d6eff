"""The ridge baseline's collapse on single sections, and the fix: new features held to the training range.

The HEST protocol standardises each frozen-encoder channel by its deviation over the training spots. Channels that
barely vary there (silent on the training sections) but fire on another section reach thousands to millions of
deviations on it, and the ridge's predictions for that section collapse while its sister sections score
normally. ``sthist.models._ridge`` holds each channel of a new section's features to the range it spans over the
training spots, both when the strength is chosen (cross-validation over the training sections) and at prediction.
This benchmark fits the ridge baseline leave-one-section-out on HER2ST (the image-bearing sections, A2 left out)
and on the two FFPE lung sections, and predicts every held-out section three ways: features held to the training
range throughout (the package); the same fitted model predicting from the features as given; and the strength
chosen and the section predicted from the features as given (the protocol as published). The clipping is switched
off here by replacing its function with the identity. One view, no smoothing, so that the features alone differ.
For each fold it also reports the strengths chosen, the largest standardised value of a held-out feature and the
number of channels beyond 10 training deviations.

    python benchmarks/ridge_range.py [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import load_sections
from lung import load_sections as lung_sections

#: Arms: (name, features held to the range while the strength is chosen, held to it at prediction).
ARMS = (
    ("held to the training range", True, True),
    ("as given at prediction", True, False),
    ("as given throughout (HEST protocol)", False, False),
)


def _identity(x, low, high):
    return x


def run(dataset: str, sections: dict, cache) -> tuple[list[dict], list[dict]]:
    """Rows (section, arm, gene set, mean r) and per-fold feature diagnostics for one dataset."""
    import contextlib

    import sthist
    from sthist.models import _methods, _ridge
    from sthist.tl._cross_validate import aligned_frames
    from sthist.tl._evaluate import evaluation_frames

    clipped, real_predict = _ridge._clipped, _methods.predict_ridge

    @contextlib.contextmanager
    def holding(to_range: bool, seen: dict | None = None):
        """The package's clipping, or the identity; with ``seen`` the predicted features are kept there."""

        def spy(state, features):
            if seen is not None:
                seen["features"], seen["state"] = features, state
            return real_predict(state, features)

        _ridge._clipped, _methods.predict_ridge = (clipped if to_range else _identity), spy
        try:
            yield
        finally:
            _ridge._clipped, _methods.predict_ridge = clipped, real_predict

    rows, diagnostics = [], []
    for held_out, sdata in sections.items():
        train = {name: s for name, s in sections.items() if name != held_out}
        models = {}
        for choose_in_range in (True, False):
            with holding(choose_in_range):
                models[choose_in_range] = sthist.tl.fit(
                    train, method="ridge", qc_column="sthist_pass_qc", token_cache=cache
                )
        seen: dict = {}
        for arm, choose_in_range, predict_in_range in ARMS:
            with holding(predict_in_range, seen):
                predicted, _ = sthist.tl.predict(
                    sdata, models[choose_in_range], inplace=False, token_cache=cache, qc_column="sthist_pass_qc",
                    tta_views=1, smooth_um=0,
                )  # fmt: skip
            observed, aligned = aligned_frames(sdata, predicted, 1e4)
            summary = evaluation_frames(observed, aligned, n_top=50)["summary"]
            rows += [
                {"dataset": dataset, "section": held_out, "arm": arm, "gene_set": gene_set,
                 "pearson_mean": summary.loc[gene_set, "pearson_mean"]}
                for gene_set in ("HEG@50", "HVG@50")
            ]  # fmt: skip
        state = models[True].tensors
        z = (seen["features"].double() - state["ridge.mean"].double()) / state["ridge.std"].double()
        diagnostics.append({
            "dataset": dataset, "held-out section": held_out,
            "strength chosen in range": f"{float(state['ridge.alpha']):g}",
            "strength chosen as given": f"{float(models[False].tensors['ridge.alpha']):g}",
            "smallest training deviation": f"{float(state['ridge.std'].min()):.1e}",
            "largest held-out |z|": f"{float(z.abs().max()):.3g}",
            "channels beyond 10 deviations": int((z.abs().amax(dim=0) > 10).sum()),
            "channels": int(z.shape[1]),
        })  # fmt: skip
    return rows, diagnostics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache

    sthist.settings.progress = False
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    cache = TokenCache()
    rows, diagnostics = [], []
    for dataset, sections in (("HER2ST", load_sections()), ("FFPE lung", lung_sections())):
        more_rows, more_diagnostics = run(dataset, sections, cache)
        rows += more_rows
        diagnostics += more_diagnostics
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["dataset", "section"], columns=["gene_set", "arm"], values="pearson_mean")
    wide.columns = [f"{gene_set}, {arm}" for gene_set, arm in wide.columns]
    mean = table.groupby(["dataset", "arm", "gene_set"])["pearson_mean"].mean().unstack("gene_set")
    text = "\n".join([
        "# Ridge baseline: held-out features held to the training range, or as given",
        "",
        f"Command: `python benchmarks/ridge_range.py` (2-core CPU; leave one section out; frozen ImageNet "
        f"EfficientNet-Lite0, one view, no smoothing, the ridge strength chosen by cross-validation over the "
        f"training sections, spatial context 300 µm). Total {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "Mean Pearson r over held-out sections:",
        "",
        markdown_table(mean.round(3)),
        "",
        "Per held-out section:",
        "",
        markdown_table(wide.round(3)),
        "",
        "Held-out features standardised by the training mean and deviation (before holding them to the range):",
        "",
        markdown_table(pd.DataFrame(diagnostics), index=False),
    ])  # fmt: skip
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "ridge_range.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

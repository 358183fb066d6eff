"""Where the time of a fit and a prediction goes, per method, on two real HER2ST sections.

Stages (wall time, from ``sthist._core._timing``): loading, QC, normalisation, then for each fit resolving
the sections, normalising, the gene panel, building the encoder, patch geometry, encoding (token cache warm:
the encoder ran once before), training and the retrieval bank; for prediction resolving, patch geometry,
encoding, retrieval and writing into a zarr store. The fixed cost of a fit is everything but the training
loop; the target is under 10 % of the total at the default epochs.

    python benchmarks/profile_fit.py [--sections C5 C6] [--epochs 60]

Run it on an idle machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=["C5", "C6"])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the fit default)")
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._config import METHOD_NAMES, TrainingConfig
    from sthist._core._report import markdown_table
    from sthist._core._timing import stage_times
    from sthist.data import TokenCache

    sthist.settings.progress = False
    epochs = args.epochs or TrainingConfig().max_epochs
    preparation = {}
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sections = sthist.datasets.her2st(args.sections)
    preparation["loading"] = time.perf_counter() - tick
    tick = time.perf_counter()
    for sdata in sections.values():
        sthist.pp.qc_spots(sdata)
    preparation["QC"] = time.perf_counter() - tick
    tick = time.perf_counter()
    for sdata in sections.values():
        sthist.pp.normalize(sdata.tables["table"])
    preparation["normalisation"] = time.perf_counter() - tick
    spots = sum(int(s.tables["table"].obs["sthist_pass_qc"].sum()) for s in sections.values())

    cache = TokenCache()
    options = {"qc_column": "sthist_pass_qc", "token_cache": cache, "random_state": 0}
    stage_times()
    tick = time.perf_counter()
    sthist.tl.fit(sections, method="ridge", **options)  # encodes every patch once (4 views are added below)
    sthist.tl.fit(sections, method="bleep", max_epochs=1, **options)
    warm = time.perf_counter() - tick
    warm_stages = stage_times()

    rows, detail = [], {}
    for method in METHOD_NAMES:
        stage_times()
        tick = time.perf_counter()
        sthist.tl.fit(sections, method=method, max_epochs=epochs, **options)
        total = time.perf_counter() - tick
        stages = stage_times()
        training = stages.get("training", 0.0)
        fixed = total - training
        detail[method] = {**stages, "total": total}
        rows.append(
            {
                "method": method,
                "total (s)": round(total, 2),
                "training (s)": round(training, 2),
                "fixed (s)": round(fixed, 2),
                "fixed share": f"{fixed / total:.1%}",
                **{name: round(seconds, 3) for name, seconds in stages.items() if name != "training"},
            }
        )
        print(rows[-1], flush=True)

    model = sthist.tl.fit(sections, method="cmrcnet", max_epochs=2, **options)
    target = next(iter(sections.values()))
    store = Path(tempfile.mkdtemp()) / "section.zarr"
    target.write(store)
    import spatialdata as sd

    backed = sd.read_zarr(store)
    stage_times()
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sthist.tl.predict(backed, model, qc_column="sthist_pass_qc")
    predicted_at = time.perf_counter()
    sthist.io.update_table(
        backed, "table", obsm=["sthist_pred", "sthist_pred_uncertainty"], uns=["sthist_pred"]
    )
    done = time.perf_counter()
    predict_stages = {**stage_times(), "writing": done - predicted_at}
    predict_row = {
        "spots": int(backed.tables["table"].obs["sthist_pass_qc"].sum()),
        "total (s)": round(done - tick, 2),
        **{name: round(seconds, 3) for name, seconds in predict_stages.items()},
    }

    text = "\n".join(
        [
            "# Where the time of a fit goes (HER2ST, two sections)",
            "",
            f"Command: `python benchmarks/profile_fit.py --sections {' '.join(args.sections)} --epochs {epochs}`; "
            f"{torch.get_num_threads()} torch threads (`sthist.settings.threads` = {sthist.settings.threads}), "
            f"{spots} training spots. Wall times in seconds.",
            "",
            "Preparation, once: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in preparation.items())
            + f"; warming the token cache (encoder over every patch, 1 + 4 views): {warm:.1f} s "
            + f"({', '.join(f'{k} {v:.1f}' for k, v in warm_stages.items())}).",
            "",
            f"Fits at {epochs} epochs with the token cache warm (fixed = total − training loop):",
            "",
            markdown_table(rows),
            "",
            "Prediction of one section (no cache: its patches are encoded) and writing into its zarr store:",
            "",
            markdown_table([predict_row]),
            "",
        ]
    )
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "profile_fit.md").write_text(text)
    (output / "profile_fit.json").write_text(
        json.dumps({"preparation": preparation, "fits": detail, "predict": predict_stages}, indent=2)
    )


if __name__ == "__main__":
    main()

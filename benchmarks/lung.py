"""Second-tissue check: the two FFPE Visium human-lung sections of ``shared/data/ffpe-lung``, each held out once.

Each section is read with ``sthist.datasets.visium`` (hires image only, about 4 µm/px), its spots QC'd with
``pp.qc_spots``; every method at its defaults (``tl.fit`` / ``tl.predict``) is trained on one section and
evaluated on the other (``tl.cross_validate(groups="section")``), over seeds. The sections' patient is not
stated by the source, so this is leave-one-section-out, not leave-one-patient-out. CMRCNet is also predicted at
other shares of retrieval in its blend (the same fits, ``predict_variants``), to show where this tissue's best
blend lies.

    python benchmarks/lung.py [--seeds 0 1 2] [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import pandas as pd

SECTIONS = ["V10F24-110_C1", "V10F24-110_D1"]
METHODS = ["cmrcnet", "bleep", "regression", "ridge"]
#: CMRCNet's blend predicted at these shares of retrieval (the default is 0.75).
BLENDS = {f"retrieval {w:g}": {"retrieval_weight": w} for w in (1.0, 0.75, 0.5, 0.25, 0.0)}


def load_sections() -> dict:
    """The two lung sections read with ``datasets.visium``, spots QC'd (``obs['sthist_pass_qc']``)."""
    import sthist

    root = Path(os.environ.get("STHIST_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    sections = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in SECTIONS:
            sdata = sthist.datasets.visium(root / "ffpe-lung" / "data" / "lung_SARS-CoV-2" / name)
            sthist.pp.qc_spots(sdata)
            sections[name] = sdata
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    cache = TokenCache()
    frames, blends = [], []
    for seed in args.seeds:
        fit_options = {"qc_column": "sthist_pass_qc", "random_state": seed}
        table = sthist.tl.cross_validate(
            sections, groups="section", methods=METHODS[1:], token_cache=cache, fit_options=fit_options
        )
        # CMRCNet once per fold: its own blend (the default) and the other shares, from the same fits.
        variants = sthist.tl.cross_validate(
            sections, groups="section", methods=["cmrcnet"], token_cache=cache, fit_options=fit_options,
            predict_variants={"default": {}, **BLENDS},
        ).assign(seed=seed)  # fmt: skip
        default = variants[variants["variant"] == "default"].drop(columns="variant")
        frames.append(pd.concat([default, table.assign(seed=seed)]))
        blends.append(variants[variants["variant"] != "default"])
    blend = pd.concat(blends)
    blend = blend[blend["gene_set"].isin(["HEG@50", "HVG@50"])]
    blend_means = (
        blend.groupby(["variant", "seed", "gene_set"])["pearson_mean"].mean().unstack("gene_set")
        .groupby(level="variant").agg(["mean", "std"]).loc[list(BLENDS)]
    )  # fmt: skip
    blend_means.columns = [f"{gene_set} {stat}" for gene_set, stat in blend_means.columns]
    table = pd.concat(frames)
    table = table[table["gene_set"].isin(["HEG@50", "HVG@50"])]
    per_section = table.pivot_table(index=["method", "section"], columns="gene_set", values="pearson_mean")
    per_seed = table.groupby(["method", "seed", "gene_set"])["pearson_mean"].mean().unstack("gene_set")
    summary = per_seed.groupby(level="method").agg(["mean", "std"])
    summary.columns = [f"{gene_set} {stat}" for gene_set, stat in summary.columns]
    summary = summary.loc[METHODS]
    means = per_seed.groupby(level="method").mean()
    ratios = pd.DataFrame([
        {"gene set": gene_set, "cmrcnet": means.loc["cmrcnet", gene_set],
         "best other": (best := means.loc[METHODS[1:], gene_set].idxmax()),
         "its score": means.loc[best, gene_set], "ratio": means.loc["cmrcnet", gene_set] / means.loc[best, gene_set]}
        for gene_set in ("HEG@50", "HVG@50")
    ])  # fmt: skip
    text = "\n".join([
        "# Second tissue: FFPE Visium human lung, leave one section out",
        "",
        f"Command: `python benchmarks/lung.py --seeds {' '.join(map(str, args.seeds))}` (2-core CPU; every method "
        f"at the defaults of tl.fit and tl.predict; hires images, about 4 µm/px). Total "
        f"{(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "Mean Pearson r over the held-out section's HEG@50 / HVG@50, mean over the two folds, then mean and "
        "standard deviation over seeds:",
        "",
        markdown_table(summary.round(3)),
        "",
        "The default against the best other method (seed means):",
        "",
        markdown_table(ratios.round(3), index=False),
        "",
        "CMRCNet (the same fits) predicted at other shares of retrieval in its blend, 1 being retrieval alone "
        "and 0 the decoder alone:",
        "",
        markdown_table(blend_means.round(3)),
        "",
        "Per held-out section (mean over seeds):",
        "",
        markdown_table(per_section.round(3)),
    ])  # fmt: skip
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "lung.md").write_text(text + "\n")
    table.to_csv(output / "lung.csv", index=False)


if __name__ == "__main__":
    main()

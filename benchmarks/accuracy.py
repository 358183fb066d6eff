"""Accuracy benchmark on the image-bearing HER2ST sections: CMRCNet vs BLEEP, regression and ridge.

Leave-one-patient-out (A, B, C) and leave-one-section-out, every method with the same frozen ImageNet
EfficientNet-Lite0 encoder, the same 112 µm / 224 px patch geometry, the same QC'd spots and the same
folds, in one run. Each section is encoded once (4 dihedral views) and the tokens are shared by all fits.
A2 is left out: its image is misregistered to its spots (79 % of spots on tissue; see shared/data/README).

    python benchmarks/accuracy.py [--epochs 30] [--output benchmarks/results]

Prints markdown tables (mean over folds and per fold) and writes ``accuracy.json`` and ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd

METHODS = ["cmrcnet", "bleep", "regression", "ridge"]
SECTIONS = ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]


def load_sections() -> dict:
    """The benchmark's HER2ST sections, spots QC'd (``obs['sthist_pass_qc']``)."""
    import sthist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sections = sthist.datasets.her2st(SECTIONS)
    for sdata in sections.values():
        sthist.pp.qc_spots(sdata)
    return sections


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean over held-out sections of HEG@50, HVG@50, MG, all-gene Pearson, fidelity, MSE."""
    wide = table.pivot_table(index=["method", "section"], columns="gene_set", values="pearson_mean")
    extra = table[table["gene_set"] == "all"].set_index(["method", "section"])[
        ["gene_gene_fidelity", "mse_mean"]
    ]
    wide = wide.join(extra)[["HEG@50", "HVG@50", "MG", "all", "gene_gene_fidelity", "mse_mean"]]
    return wide


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    options = {
        "max_epochs": args.epochs,
        "views": args.views,
        "learning_rate": 1e-3,
        "batch_size": 64,
        "k": 50,
        "qc_column": "sthist_pass_qc",
        "random_state": 0,
    }
    cache = TokenCache()
    markers = sthist.datasets.her2st_marker_genes
    results, timings = {}, {}
    for groups in ["patient", "section"]:
        tick = time.perf_counter()
        table, models = sthist.tl.cross_validate(
            sections, groups=groups, methods=METHODS, marker_genes=markers, fit_options=options,
            token_cache=cache, return_models=True,
        )  # fmt: skip
        timings[groups] = time.perf_counter() - tick
        results[groups] = table
        if groups == "patient":
            localisation = []
            for method in METHODS:
                model = models[("A", method)]
                predicted, _ = sthist.tl.predict(
                    sections["A1"], model, inplace=False, token_cache=cache, qc_column="sthist_pass_qc"
                )
                adata = sections["A1"].tables["table"].copy()
                sthist.pp.normalize(adata, overwrite=True)
                adata.obsm["sthist_pred"] = predicted
                genes = [g for g in ["ERBB2", "GRB7", "KRT8", "KRT18"] if g in model.genes]
                frame = sthist.tl.localisation(adata, genes=genes).reset_index()
                frame.insert(0, "method", method)
                localisation.append(frame)
            localisation = pd.concat(localisation, ignore_index=True)
    total = time.perf_counter() - start

    lines = [
        "# Accuracy on HER2ST (image-bearing sections, A2 left out as misregistered)",
        "",
        f"Command: `python benchmarks/accuracy.py --epochs {args.epochs} --views {args.views}` "
        f"(2-core CPU, fast path: frozen ImageNet EfficientNet-Lite0, {args.views} dihedral views cached, "
        f"{args.epochs} epochs, lr 1e-3, batch 64, k 50; MALLOC_MMAP_THRESHOLD_="
        f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). Total {total / 60:.1f} min "
        f"(token cache {cache.nbytes / 2**20:.0f} MiB for {len(cache)} section entries).",
        "",
        "Mean Pearson r across spots of each held-out section (HEG@50/HVG@50: top 50 genes of that section by "
        "mean/variance among the panel; MG: breast-cancer markers in the panel; all: whole panel), gene–gene "
        "correlation fidelity and MSE (log1p units), averaged over held-out sections.",
    ]
    payload = {"options": options, "timings_s": timings, "total_s": total, "cache_bytes": cache.nbytes}
    for groups, table in results.items():
        wide = summarise(table)
        mean = wide.groupby(level="method").mean().loc[METHODS]
        name = "leave-one-patient-out" if groups == "patient" else "leave-one-section-out"
        lines += [
            "",
            f"## {name} ({timings[groups] / 60:.1f} min)",
            "",
            "Mean over held-out sections:",
            "",
            markdown_table(mean),
            "",
        ]
        lines += ["Per held-out section:", "", markdown_table(wide), ""]
        payload[groups] = table.to_dict(orient="records")
    lines += [
        "## Cancer localisation on A1 (patient A held out)",
        "",
        "AUROC of each marker's expression for spots labelled invasive cancer vs all other labelled spots:",
        "",
        markdown_table(localisation, index=False),
        "",
    ]
    payload["localisation_A1"] = localisation.to_dict(orient="records")
    text = "\n".join(lines)
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "accuracy.md").write_text(text + "\n")
    (output / "accuracy.json").write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()

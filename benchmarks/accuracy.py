"""Accuracy benchmark on the image-bearing HER2ST sections: an ablation run, every arm on the same folds.

Each method at the settings chosen for it by ``benchmarks/nested.py`` (its search over the training
patients), then CMRCNet with each of its components switched off once: the reconstruction loss (which leaves
BLEEP on CMRCNet's settings, its 20 neighbours included), test-time augmentation at prediction, the
retrieval neighbours chosen in round 3 (50 as before), the spatial context, the regional token grid of the
reconstruction branch (all 49 tokens instead), and the panel with technical genes left out; and the ridge
baseline at the HEST protocol's fixed strength and without its chosen smoothing. Arms identical to an
earlier one reuse its fits. Leave-one-patient-out (A, B, C) and
leave-one-section-out, the same frozen ImageNet EfficientNet-Lite0 encoder, the same 112 µm / 224 px patch
geometry, the same QC'd spots and the same folds, in one run. Each section is encoded once (4 dihedral views)
and the tokens are shared by all fits, so that fit times compare training alone.
A2 is left out: its image is misregistered to its spots (79 % of spots on tissue; see shared/data/README).

    python benchmarks/accuracy.py [--section-arms methods|all] [--output benchmarks/results]

Prints markdown tables (mean over held-out sections and per section) and writes ``accuracy.json`` (a
``patient`` and a ``section`` list of records with ``method`` (the arm), ``gene_set``, ``pearson_mean``) and
``accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd

SECTIONS = ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]
#: Shared by every arm: the tables' batch, QC and seed (tl.fit's defaults for the rest: each method's chosen
#: settings, including its retrieval neighbours and prediction smoothing, recorded in the model).
BASE = {"batch_size": 64, "qc_column": "sthist_pass_qc", "random_state": 0}
#: Arm name → (method, options of tl.fit, with ``predict``: options of tl.predict). The first four are the methods
#: at their chosen settings (``nested_round3.md``); the others switch one component of a default off.
ARMS: dict[str, tuple[str, dict]] = {
    "cmrcnet": ("cmrcnet", {}),
    "bleep": ("bleep", {}),
    "regression": ("regression", {}),
    "ridge": ("ridge", {}),
    "cmrcnet −reconstruction": ("bleep", {"k": 20}),
    "cmrcnet −TTA (patch as scanned only)": ("cmrcnet", {"predict": {"tta_views": 1}}),
    "cmrcnet, k 50 (before round 3)": ("cmrcnet", {"predict": {"k": 50}}),
    "cmrcnet −context": ("cmrcnet", {"architecture": {"context_um": None}}),
    "cmrcnet −regional grid (49 tokens)": ("cmrcnet", {"architecture": {"reconstruction_grid": 0}}),
    "cmrcnet, technical genes excluded": ("cmrcnet", {"data": {"exclude_technical": True}}),
    "ridge, HEST strength": ("ridge", {"architecture": {"ridge_alpha": "hest"}}),
    "ridge, not smoothed": ("ridge", {"predict": {"smooth_um": 0}}),
}
METHODS = ["cmrcnet", "bleep", "regression", "ridge"]
COLUMNS = ["HEG@50", "HVG@50", "MG", "panel", "gene_gene_fidelity", "mse_mean", "heg_pairwise_r_predicted",
           "heg_pairwise_r_observed"]  # fmt: skip


def load_sections() -> dict:
    """The benchmark's HER2ST sections, spots QC'd (``obs['sthist_pass_qc']``)."""
    import sthist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sections = sthist.datasets.her2st(SECTIONS)
    for sdata in sections.values():
        sthist.pp.qc_spots(sdata)
    return sections


def run_arms(sections: dict, arms: dict, *, groups: str, base: dict, token_cache, predict_options=None):
    """Fit and evaluate each arm on the same folds (one group held out at a time).

    Returns the records (arm, section, gene set, mean Pearson r, gene–gene fidelity, MSE), the A1 ERBB2
    AUROC of each arm (patient A held out) and each arm's fit time summed over folds.
    """
    import sthist
    from sthist.tl._cross_validate import aligned_frames, section_group
    from sthist.tl._evaluate import evaluation_frames
    from sthist.tl._fit import merge_fit_options

    markers = sthist.datasets.her2st_marker_genes
    group = {name: section_group(name, sdata, groups) for name, sdata in sections.items()}
    rows, auroc, fit_seconds = [], [], {}
    done: dict[str, str] = {}  # an arm identical to an earlier one reuses its results
    for arm, (method, options) in arms.items():
        same = done.get(json.dumps([method, options], sort_keys=True))
        if same is not None:
            rows += [{**row, "method": arm} for row in rows if row["method"] == same]
            auroc += [{**row, "method": arm} for row in auroc if row["method"] == same]
            fit_seconds[arm] = fit_seconds[same]
            print(f"{groups}: {arm}: the same fits as {same}", flush=True)
            continue
        done[json.dumps([method, options], sort_keys=True)] = arm
        fit_seconds[arm] = 0.0
        options = dict(options)
        arm_predict = {**(predict_options or {}), **options.pop("predict", {})}  # e.g. tta_views
        for held_out in sorted(set(group.values())):
            train = {n: s for n, s in sections.items() if group[n] != held_out}
            tick = time.perf_counter()
            model = sthist.tl.fit(
                train, method=method, token_cache=token_cache, **merge_fit_options(base, options)
            )
            fit_seconds[arm] += time.perf_counter() - tick
            for name, sdata in sections.items():
                if group[name] != held_out:
                    continue
                predicted, _ = sthist.tl.predict(
                    sdata, model, inplace=False, token_cache=token_cache, qc_column=base["qc_column"],
                    **arm_predict,
                )  # fmt: skip
                observed, aligned = aligned_frames(sdata, predicted, 1e4)
                result = evaluation_frames(observed, aligned, n_top=50, marker_genes=markers)
                heg = result["genes"].index[result["genes"]["in_HEG@50"]]
                for gene_set, summary in result["summary"].iterrows():
                    rows.append({"method": arm, "base_method": method, "held_out": held_out, "section": name,
                                 "gene_set": gene_set, "pearson_mean": summary["pearson_mean"],
                                 "gene_gene_fidelity": result["gene_gene_fidelity"],
                                 "mse_mean": summary["mse_mean"],
                                 "heg_pairwise_r_predicted": _pairwise_r(aligned[heg]),
                                 "heg_pairwise_r_observed": _pairwise_r(observed[heg])})  # fmt: skip
                if name == "A1" and groups == "patient" and "ERBB2" in model.genes:
                    adata = sdata.tables["table"].copy()
                    sthist.pp.normalize(adata, overwrite=True)
                    adata.obsm["sthist_pred"] = predicted.reindex(adata.obs_names)
                    frame = sthist.tl.localisation(adata, genes=["ERBB2"])
                    auroc.append({"method": arm, "ERBB2 AUROC": float(frame.loc["ERBB2", "auroc_predicted"])})
        print(f"{groups}: {arm}: {fit_seconds[arm]:.0f} s of fitting", flush=True)
    return rows, auroc, fit_seconds


def _pairwise_r(frame: pd.DataFrame) -> float:
    """Mean Pearson r over pairs of genes (columns): how much the genes move together across spots."""
    import numpy as np

    r = frame.corr().to_numpy()
    return float(np.nanmean(r[np.triu_indices_from(r, k=1)]))


def summarise(rows: list[dict], order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per held-out section (arm × section) and mean over sections (one row per arm)."""
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["method", "section"], columns="gene_set", values="pearson_mean")
    extra = table[table["gene_set"] == "panel"].set_index(["method", "section"])[
        ["gene_gene_fidelity", "mse_mean", "heg_pairwise_r_predicted", "heg_pairwise_r_observed"]
    ]
    wide = wide.join(extra)[COLUMNS]
    return wide, wide.groupby(level="method").mean().loc[order]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--section-arms", choices=["methods", "all"], default="methods",
        help="arms run leave-one-section-out too (default: the four methods)",
    )  # fmt: skip
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    import sthist
    from sthist._core._config import (
        TTA_VIEWS,
        ArchitectureConfig,
        TrainingConfig,
        default_k,
        default_smooth_um,
    )
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache
    from sthist.tl._fit import merge_fit_options

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    cache = TokenCache()
    training, architecture = TrainingConfig(), ArchitectureConfig()
    # Encode every section once before timing, so that no arm's fit time includes the encoding.
    sthist.tl.fit(sections, method="bleep", token_cache=cache, **merge_fit_options(BASE, {"max_epochs": 1}))
    results, auroc, seconds, minutes = {}, {}, {}, {}
    for groups in ["patient", "section"]:
        arms = ARMS if groups == "patient" or args.section_arms == "all" else {m: ARMS[m] for m in METHODS}
        tick = time.perf_counter()
        results[groups], auroc[groups], seconds[groups] = run_arms(
            sections, arms, groups=groups, base=BASE, token_cache=cache
        )
        minutes[groups] = (time.perf_counter() - tick) / 60
    total = time.perf_counter() - start

    lines = [
        "# Accuracy on HER2ST: every method at its chosen settings, and CMRCNet's components switched off",
        "",
        f"Command: `python benchmarks/accuracy.py{'' if args.section_arms == 'methods' else ' --section-arms all'}` "
        f"(2-core CPU, {torch.get_num_threads()} torch threads, machine otherwise idle; fast path: frozen "
        f"ImageNet EfficientNet-Lite0, {training.views} dihedral views cached, tl.fit defaults: "
        f"{training.max_epochs} epochs, lr {training.learning_rate:g}, batch {BASE['batch_size']}, k "
        f"{default_k('cmrcnet')} (CMRCNet) / {default_k('bleep')} (BLEEP), context {architecture.context_um} µm, "
        f"regional grid {architecture.reconstruction_grid}; tl.predict default: test-time augmentation over "
        f"{TTA_VIEWS} dihedral views, smoothing over {default_smooth_um('ridge'):g} µm for ridge only; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). Total {total / 60:.1f} min "
        f"(token cache {cache.nbytes / 2**20:.0f} MiB for {len(cache)} section entries).",
        "",
        "Arms: " + "; ".join(f"**{arm}** = `{method}` {options or '(defaults)'}" for arm, (method, options) in ARMS.items()),
        "",
        "Mean Pearson r across spots of each held-out section (HEG@50/HVG@50: top 50 genes of that section by "
        "mean/variance among the panel; MG: breast-cancer markers in the panel; panel: every predicted gene), gene–gene "
        "correlation fidelity, MSE (log1p units) and the mean pairwise r among the HEG@50 genes, predicted "
        "and observed (predictions that all move together show a high predicted value), averaged over "
        "held-out sections; ERBB2 AUROC: predicted "
        "ERBB2 separating invasive cancer from the other labelled spots of A1 (patient A held out); fit: "
        "seconds summed over the folds, tokens cached.",
    ]  # fmt: skip
    payload = {"base": BASE, "arms": {a: {"method": m, "options": o} for a, (m, o) in ARMS.items()},
               "defaults": {"training": training.to_dict(), "architecture": architecture.to_dict()},
               "minutes": minutes, "total_s": total, "cache_bytes": cache.nbytes}  # fmt: skip
    for groups, rows in results.items():
        wide, mean = summarise(rows, [a for a in ARMS if a in {r["method"] for r in rows}])
        mean = mean.assign(**{"fit (s)": pd.Series(seconds[groups])})
        if auroc[groups]:
            mean = mean.join(pd.DataFrame(auroc[groups]).set_index("method"))
        name = "leave-one-patient-out" if groups == "patient" else "leave-one-section-out"
        lines += ["", f"## {name} ({minutes[groups]:.1f} min)", "", "Mean over held-out sections:", "",
                  markdown_table(mean), "", "Per held-out section:", "", markdown_table(wide), ""]  # fmt: skip
        payload[groups] = rows
        payload[f"fit_seconds_{groups}"] = seconds[groups]
        payload[f"auroc_A1_{groups}"] = auroc[groups]
    text = "\n".join(lines)
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "accuracy.md").write_text(text + "\n")
    (output / "accuracy.json").write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()

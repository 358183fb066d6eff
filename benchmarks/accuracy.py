"""Accuracy benchmark on the image-bearing HER2ST sections: every method and ablation on the same folds, over seeds.

Each method at the settings chosen for it inside training patients (``benchmarks/nested.py``), then CMRCNet
with each of its parts switched off once: the expression decoder (retrieval alone, the decoder never
trained), retrieval (the decoder's prediction alone), the reconstruction loss, the blend fixed at its
retrieval end (the decoder trained but not used), test-time augmentation, and 50 retrieval neighbours
instead of 20; and the ridge baseline at the HEST protocol's fixed strength and without its chosen smoothing.
Arms that differ only in how they predict share their fits. Leave-one-patient-out (A, B, C) and
leave-one-section-out, the same frozen ImageNet EfficientNet-Lite0 encoder, the same 112 µm / 224 px patch
geometry, the same QC'd spots and the same folds, repeated for each seed (the seed of every fit); tables
give the mean over seeds and its spread. Each section is encoded once (4 dihedral views) and the tokens are
shared by all fits, so that fit times compare training alone.
A2 is left out: its image is misregistered to its spots (79 % of spots on tissue; see shared/data/README).

    python benchmarks/accuracy.py [--seeds 0 1 2] [--section-arms methods|all] [--output benchmarks/results]

Prints markdown tables and writes ``accuracy.json`` (``patient`` and ``section``: one record per arm
(``method``), held-out section and ``gene_set`` with ``pearson_mean`` averaged over seeds; ``*_by_seed``: the
records of each seed) and ``accuracy.md``.
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
#: Shared by every arm: the tables' batch and QC (tl.fit's defaults for the rest: each method's chosen
#: settings, including its retrieval neighbours, blend and prediction smoothing, recorded in the model).
BASE = {"batch_size": 64, "qc_column": "sthist_pass_qc"}
#: Arm name → (method, options of tl.fit, with ``predict``: options of tl.predict). The first four are the methods
#: at their chosen settings; the others switch one part of a default off.
ARMS: dict[str, tuple[str, dict]] = {
    "cmrcnet": ("cmrcnet", {}),
    "bleep": ("bleep", {}),
    "regression": ("regression", {}),
    "ridge": ("ridge", {}),
    "cmrcnet −decoder (retrieval alone)": ("cmrcnet", {"architecture": {"decoder_weight": 0.0}}),
    "cmrcnet −retrieval (decoder alone)": ("cmrcnet", {"predict": {"retrieval_weight": 0.0}}),
    "cmrcnet, blend at 1 (decoder trained, unused)": ("cmrcnet", {"predict": {"retrieval_weight": 1.0}}),
    "cmrcnet −reconstruction": ("cmrcnet", {"architecture": {"reconstruction_weight": 0.0}}),
    "cmrcnet, every spot reconstructed": ("cmrcnet", {"architecture": {"reconstruction_share": 1.0}}),
    "cmrcnet −TTA (patch as scanned only)": ("cmrcnet", {"predict": {"tta_views": 1}}),
    "cmrcnet, k 50": ("cmrcnet", {"predict": {"k": 50}}),
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

    Arms with the same method and fit options share one fit per fold and predict with their own options.
    Returns the records (arm, section, gene set, mean Pearson r, gene–gene fidelity, MSE), the A1 ERBB2
    AUROC of each arm (patient A held out) and each arm's fit time summed over folds.
    """
    import sthist
    from sthist.tl._cross_validate import section_group
    from sthist.tl._fit import merge_fit_options

    group = {name: section_group(name, sdata, groups) for name, sdata in sections.items()}
    fits: dict[str, tuple[str, dict, dict]] = {}  # fit key → (method, fit options, {arm: predict options})
    for arm, (method, options) in arms.items():
        options = dict(options)
        arm_predict = {**(predict_options or {}), **options.pop("predict", {})}  # e.g. tta_views
        key = json.dumps([method, options], sort_keys=True)
        fits.setdefault(key, (method, options, {}))[2][arm] = arm_predict
    rows, auroc, fit_seconds = [], [], {}
    for method, options, variants in fits.values():
        seconds = 0.0
        for held_out in sorted(set(group.values())):
            train = {n: s for n, s in sections.items() if group[n] != held_out}
            tick = time.perf_counter()
            model = sthist.tl.fit(
                train, method=method, token_cache=token_cache, **merge_fit_options(base, options)
            )
            seconds += time.perf_counter() - tick
            for name, sdata in sections.items():
                if group[name] != held_out:
                    continue
                for arm, arm_predict in variants.items():
                    a1 = name == "A1" and groups == "patient" and "ERBB2" in model.genes
                    row, score = _evaluate(
                        sdata, model, arm, arm_predict, token_cache, base["qc_column"], auroc=a1
                    )
                    rows += [{**r, "held_out": held_out, "section": name, "base_method": method} for r in row]
                    if score is not None:
                        auroc.append({"method": arm, "ERBB2 AUROC": score})
        for arm in variants:
            fit_seconds[arm] = seconds
        print(f"{groups}: {', '.join(variants)}: {seconds:.0f} s of fitting", flush=True)
    return rows, auroc, fit_seconds


def _evaluate(sdata, model, arm: str, predict_options: dict, token_cache, qc_column, *, auroc: bool):
    """Records of one arm on one held-out section, and (with ``auroc``) its ERBB2 AUROC, else None."""
    import sthist
    from sthist.tl._cross_validate import aligned_frames
    from sthist.tl._evaluate import evaluation_frames

    predicted, _ = sthist.tl.predict(
        sdata, model, inplace=False, token_cache=token_cache, qc_column=qc_column, **predict_options
    )
    observed, aligned = aligned_frames(sdata, predicted, 1e4)
    result = evaluation_frames(observed, aligned, n_top=50, marker_genes=sthist.datasets.her2st_marker_genes)
    heg = result["genes"].index[result["genes"]["in_HEG@50"]]
    rows = [{"method": arm, "gene_set": gene_set, "pearson_mean": summary["pearson_mean"],
             "gene_gene_fidelity": result["gene_gene_fidelity"], "mse_mean": summary["mse_mean"],
             "heg_pairwise_r_predicted": _pairwise_r(aligned[heg]),
             "heg_pairwise_r_observed": _pairwise_r(observed[heg])}
            for gene_set, summary in result["summary"].iterrows()]  # fmt: skip
    score = None
    if auroc:  # predicted ERBB2 separating A1's invasive cancer from its other labelled spots
        adata = sdata.tables["table"].copy()
        sthist.pp.normalize(adata, overwrite=True)
        adata.obsm["sthist_pred"] = predicted.reindex(adata.obs_names)
        score = float(sthist.tl.localisation(adata, genes=["ERBB2"]).loc["ERBB2", "auroc_predicted"])
    return rows, score


def _pairwise_r(frame: pd.DataFrame) -> float:
    """Mean Pearson r over pairs of genes (columns): how much the genes move together across spots."""
    import numpy as np

    r = frame.corr().to_numpy()
    return float(np.nanmean(r[np.triu_indices_from(r, k=1)]))


def summarise(rows: list[dict], order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per held-out section (arm × section, mean over seeds), the mean over sections (one row per arm, mean
    over seeds) and the spread over seeds of the mean over sections (HEG@50 and HVG@50)."""
    table = pd.DataFrame(rows)
    per_seed = table.pivot_table(
        index=["method", "seed", "section"], columns="gene_set", values="pearson_mean"
    )
    extra = table[table["gene_set"] == "panel"].groupby(["method", "seed", "section"])[COLUMNS[4:]].mean()
    per_seed = per_seed.join(extra)[COLUMNS]
    wide = per_seed.groupby(level=["method", "section"]).mean()
    over_sections = per_seed.groupby(level=["method", "seed"]).mean()
    spread = over_sections[["HEG@50", "HVG@50"]].groupby(level="method").agg(["mean", "std", "min", "max"])
    spread.columns = [f"{gene_set} {stat}" for gene_set, stat in spread.columns]
    spread["seeds"] = over_sections.groupby(level="method").size()
    order = [arm for arm in order if arm in spread.index]
    return wide, over_sections.groupby(level="method").mean().loc[order], spread.loc[order]


def ratios(mean: pd.DataFrame) -> pd.DataFrame:
    """The default's seed-mean score over the best other method's, per gene set (≥ 1.06 is the target)."""
    others = mean.loc[[m for m in METHODS[1:] if m in mean.index]]
    out = []
    for gene_set in ("HEG@50", "HVG@50"):
        best = others[gene_set].idxmax()
        out.append({"gene set": gene_set, "cmrcnet": mean.loc["cmrcnet", gene_set], "best other": best,
                    "its score": others.loc[best, gene_set],
                    "ratio": mean.loc["cmrcnet", gene_set] / others.loc[best, gene_set]})  # fmt: skip
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the fits")
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
    results: dict[str, list] = {"patient": [], "section": []}
    auroc: dict[str, list] = {"patient": [], "section": []}
    seconds: dict[str, dict] = {"patient": {}, "section": {}}
    minutes = {"patient": 0.0, "section": 0.0}
    for seed in args.seeds:
        for groups in ["patient", "section"]:
            arms = (
                ARMS if groups == "patient" or args.section_arms == "all" else {m: ARMS[m] for m in METHODS}
            )
            tick = time.perf_counter()
            rows, scores, fit_seconds = run_arms(
                sections, arms, groups=groups, base={**BASE, "random_state": seed}, token_cache=cache
            )
            results[groups] += [{**row, "seed": seed} for row in rows]
            auroc[groups] += [{**row, "seed": seed} for row in scores]
            for arm, value in fit_seconds.items():
                seconds[groups][arm] = seconds[groups].get(arm, 0.0) + value / len(args.seeds)
            minutes[groups] += (time.perf_counter() - tick) / 60
    total = time.perf_counter() - start

    lines = [
        "# Accuracy on HER2ST: every method at its chosen settings, and CMRCNet's parts switched off",
        "",
        f"Command: `python benchmarks/accuracy.py --seeds {' '.join(map(str, args.seeds))}"
        f"{'' if args.section_arms == 'methods' else ' --section-arms all'}` "
        f"(2-core CPU, {torch.get_num_threads()} torch threads, machine otherwise idle; fast path: frozen "
        f"ImageNet EfficientNet-Lite0, {training.views} dihedral views cached, tl.fit defaults: "
        f"{training.max_epochs} epochs, lr {training.learning_rate:g}, batch {BASE['batch_size']}, k "
        f"{default_k('cmrcnet')} (CMRCNet) / {default_k('bleep')} (BLEEP), context {architecture.context_um} µm, "
        f"regional grid {architecture.reconstruction_grid}, CMRCNet's retrieval weight "
        f"{architecture.retrieval_weight:g}; tl.predict default: test-time augmentation over "
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
        "held-out sections and then over seeds; ERBB2 AUROC: predicted "
        "ERBB2 separating invasive cancer from the other labelled spots of A1 (patient A held out), mean over "
        "seeds; fit: seconds summed over the folds (tokens cached), mean over seeds.",
    ]  # fmt: skip
    payload = {"base": BASE, "seeds": args.seeds,
               "arms": {a: {"method": m, "options": o} for a, (m, o) in ARMS.items()},
               "defaults": {"training": training.to_dict(), "architecture": architecture.to_dict()},
               "minutes": minutes, "total_s": total, "cache_bytes": cache.nbytes}  # fmt: skip
    for groups, rows in results.items():
        wide, mean, spread = summarise(rows, list(ARMS))
        mean = mean.assign(**{"fit (s)": pd.Series(seconds[groups])})
        if auroc[groups]:
            mean = mean.join(pd.DataFrame(auroc[groups]).groupby("method")[["ERBB2 AUROC"]].mean())
        name = "leave-one-patient-out" if groups == "patient" else "leave-one-section-out"
        lines += ["", f"## {name} ({minutes[groups]:.1f} min)", "",
                  "The default against the best other method (seed means):", "",
                  markdown_table(ratios(mean), index=False), "",
                  f"Mean over held-out sections and {len(args.seeds)} seeds:", "", markdown_table(mean), "",
                  "Spread over seeds of the mean over held-out sections:", "", markdown_table(spread), "",
                  "Per held-out section (mean over seeds):", "", markdown_table(wide), ""]  # fmt: skip
        averaged = (
            pd.DataFrame(rows)
            .groupby(["method", "section", "gene_set"], as_index=False)["pearson_mean"]
            .mean()
        )
        payload[groups] = averaged.to_dict(orient="records")
        payload[f"{groups}_by_seed"] = rows
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

"""Ablation of the generalisation options on HER2ST, leave one patient out, every arm in one run.

Each arm is a method with some of the new options switched on (per-section centring of expression and of
encoder tokens, trainable token layers with a detached reconstruction target, test-time augmentation,
smoothing over neighbours). Same sections, folds, frozen ImageNet EfficientNet-Lite0 encoder, 112 µm
patches and cached tokens for every arm; the gene panel is chosen inside each training fold. The figures are
measured on the held-out patients and are reported, not used to choose defaults (that takes nested
cross-validation inside the training patients).

    python benchmarks/ablation.py [--epochs 30] [--arms all] [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import load_sections, run_arms

CENTRING = {"data": {"center_expression": True, "center_tokens": True}}
TOKEN_LAYERS = {"architecture": {"token_layers": 1, "detach_target": True}}
ALL = {**CENTRING, **TOKEN_LAYERS}
STAIN = {"data": {"stain_normalization": True}}
#: Arm name → (method, options of tl.fit over the base, options of tl.predict).
ARMS = {
    "cmrcnet": ("cmrcnet", {}, {}),
    "bleep": ("bleep", {}, {}),
    "regression": ("regression", {}, {}),
    "ridge": ("ridge", {}, {}),
    "cmrcnet +centre expression": ("cmrcnet", {"data": {"center_expression": True}}, {}),
    "cmrcnet +centre tokens": ("cmrcnet", {"data": {"center_tokens": True}}, {}),
    "cmrcnet +token layers (detached target)": ("cmrcnet", TOKEN_LAYERS, {}),
    "cmrcnet +all": ("cmrcnet", ALL, {}),
    "cmrcnet +all, no reconstruction (bleep)": ("bleep", ALL, {}),
    "regression +centring": ("regression", CENTRING, {}),
    "ridge +centring": ("ridge", CENTRING, {}),
    "cmrcnet +all +TTA 4 views": ("cmrcnet", ALL, {"tta_views": 4}),
    "cmrcnet +all +TTA +smoothing 250 µm": ("cmrcnet", ALL, {"tta_views": 4, "smooth_um": 250.0}),
    "cmrcnet +stain normalisation": ("cmrcnet", STAIN, {}),
    "bleep +stain normalisation": ("bleep", STAIN, {}),
    "regression +stain normalisation": ("regression", STAIN, {}),
    "ridge +stain normalisation": ("ridge", STAIN, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--arms", nargs="+", default=["all"], help="arm names, or 'all'")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--name", default="ablation", help="stem of the result files (default: ablation)")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache
    from sthist.tl._fit import merge_fit_options

    arms = ARMS if args.arms == ["all"] else {name: ARMS[name] for name in args.arms}
    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    base = {"max_epochs": args.epochs, "batch_size": 64, "k": 50, "qc_column": "sthist_pass_qc", "random_state": 0,
            "training": {"views": args.views, "learning_rate": 1e-3}, "architecture": {"context_um": None}}  # fmt: skip
    cache = TokenCache()
    # Encode every section once before timing, so that no arm's fit time includes the encoding.
    sthist.tl.fit(sections, method="bleep", token_cache=cache, **merge_fit_options(base, {"max_epochs": 1}))
    rows, auroc, fit_seconds = [], [], {}
    for arm, (method, fit_options, predict_options) in arms.items():
        arm_rows, arm_auroc, seconds = run_arms(
            sections, {arm: (method, fit_options)}, groups="patient", base=base, token_cache=cache,
            predict_options=predict_options,
        )  # fmt: skip
        rows += arm_rows
        auroc += arm_auroc
        fit_seconds.update(seconds)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["method", "section"], columns="gene_set", values="pearson_mean")
    fidelity = table[table["gene_set"] == "panel"].set_index(["method", "section"])["gene_gene_fidelity"]
    wide = wide.join(fidelity)[["HEG@50", "HVG@50", "MG", "panel", "gene_gene_fidelity"]]
    mean = wide.groupby(level="method").mean().loc[list(arms)]
    mean = mean.join(pd.DataFrame(auroc).set_index("method")).assign(
        **{"fit (s, 3 folds)": pd.Series(fit_seconds)}
    )
    total = time.perf_counter() - start
    text = "\n".join([
        "# Ablation of the generalisation options on HER2ST (leave one patient out)",
        "",
        f"Command: `python benchmarks/ablation.py --epochs {args.epochs} --views {args.views}"
        f"{'' if args.arms == ['all'] else ' --arms ' + ' '.join(repr(a) for a in args.arms)}"
        f"{'' if args.name == 'ablation' else ' --name ' + args.name}` (2-core CPU, "
        f"{torch.get_num_threads()} torch threads, machine otherwise idle; frozen ImageNet EfficientNet-Lite0, "
        f"{args.views} dihedral views cached, lr 1e-3, batch 64, k 50; MALLOC_MMAP_THRESHOLD_="
        f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). Total {total / 60:.1f} min.",
        "",
        "Mean over the held-out sections (A1, B4, C2–C6; patients A, B, C each held out once) of the mean Pearson "
        "r across spots (HEG@50/HVG@50: top 50 panel genes of that section by mean/variance; MG: markers); "
        "ERBB2 AUROC: predicted ERBB2 separating invasive cancer on A1; fit time summed over the three folds "
        "(tokens cached before timing). "
        "Measured on the test folds: a report, not a choice of defaults.",
        "",
        markdown_table(mean),
        "",
        "Per held-out section:",
        "",
        markdown_table(wide),
        "",
    ])  # fmt: skip
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{args.name}.md").write_text(text)
    payload = {"options": base, "arms": {k: {"method": m, "fit": f, "predict": p} for k, (m, f, p) in arms.items()},
               "fit_seconds": fit_seconds, "total_s": total, "patient": rows, "auroc_A1": auroc}  # fmt: skip
    (output / f"{args.name}.json").write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()

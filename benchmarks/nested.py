"""Nested cross-validation on HER2ST: settings chosen inside the training patients, judged on the held-out one.

For each outer fold (one patient held out) every method's candidate settings are ranked by
:func:`sthist.tl.select_settings` with inner leave-one-patient-out folds over the training patients only;
each method is then refitted at its own best candidate on all training patients and evaluated on the held-out
patient's sections. The held-out patient plays no part in any choice, so the outer figures carry no tuning
optimism, and each baseline gets the same search as CMRCNet.

    python benchmarks/nested.py [--epochs 30] [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import load_sections

CENTRED = {"center_expression": True, "center_tokens": True}
LAYERS = {"token_layers": 1, "detach_target": True}
#: Candidate settings per method: the current defaults beside the generalisation options.
CANDIDATES = {
    method: {"plain": {}, "centred": CENTRED} for method in ("cmrcnet", "bleep", "regression", "ridge")
}
#: Added with --token-layers (about 40 % more time).
WITH_LAYERS = {"cmrcnet": {"token layers": LAYERS}, "bleep": {"token layers": LAYERS}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument(
        "--token-layers", action="store_true", help="also try one token layer (detached target)"
    )
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()
    candidates_of = {
        m: {**c, **(WITH_LAYERS.get(m, {}) if args.token_layers else {})} for m, c in CANDIDATES.items()
    }

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache
    from sthist.tl._cross_validate import aligned_frames, section_group
    from sthist.tl._evaluate import evaluation_frames

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    base = {"max_epochs": args.epochs, "views": args.views, "learning_rate": 1e-3, "batch_size": 64, "k": 50,
            "qc_column": "sthist_pass_qc", "random_state": 0}  # fmt: skip
    cache = TokenCache()
    markers = sthist.datasets.her2st_marker_genes
    patient = {name: section_group(name, sdata, "patient") for name, sdata in sections.items()}
    choices, rows = [], []
    for held_out in sorted(set(patient.values())):
        train = {n: s for n, s in sections.items() if patient[n] != held_out}
        test = {n: s for n, s in sections.items() if patient[n] == held_out}
        for method, candidates in candidates_of.items():
            named = {name: {"method": method, **options} for name, options in candidates.items()}
            ranking = sthist.tl.select_settings(
                train, named, groups="patient", fit_options=base, token_cache=cache
            )
            best = ranking.attrs["best"]
            choices.append({"held_out": held_out, "method": method, "chosen": best,
                            **{f"inner {c}": ranking.loc[c, "score"] for c in ranking.index}})  # fmt: skip
            model = sthist.tl.fit(train, method=method, token_cache=cache, **base, **candidates[best])
            for name, sdata in test.items():
                predicted, _ = sthist.tl.predict(
                    sdata, model, inplace=False, token_cache=cache, qc_column=base["qc_column"]
                )
                observed, predicted = aligned_frames(sdata, predicted, 1e4)
                summary = evaluation_frames(observed, predicted, n_top=50, marker_genes=markers)["summary"]
                rows += [{"held_out": held_out, "section": name, "method": method, "chosen": best,
                          "gene_set": gene_set, "pearson_mean": row["pearson_mean"]}
                         for gene_set, row in summary.iterrows()]  # fmt: skip
            print(
                f"{held_out} held out, {method}: chose {best!r} ({ranking['score'].round(3).to_dict()})",
                flush=True,
            )
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["method", "section"], columns="gene_set", values="pearson_mean")
    wide = wide[["HEG@50", "HVG@50", "MG", "all"]]
    mean = wide.groupby(level="method").mean().loc[list(CANDIDATES)]
    total = time.perf_counter() - start
    text = "\n".join([
        "# Nested cross-validation on HER2ST (settings chosen inside the training patients)",
        "",
        f"Command: `python benchmarks/nested.py --epochs {args.epochs} --views {args.views}"
        f"{' --token-layers' if args.token_layers else ''}` (2-core CPU, frozen "
        f"ImageNet EfficientNet-Lite0, {args.views} dihedral views cached, lr 1e-3, batch 64, k 50; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). Total {total / 60:.1f} min.",
        "",
        "Outer folds leave one patient out; inside each, every method's candidates are ranked by leave-one-"
        "patient-out over the training patients (score: mean of HEG@50 and HVG@50), and the best is refitted "
        "on all training patients. Mean Pearson r over the held-out sections:",
        "",
        markdown_table(mean),
        "",
        "Choices per outer fold (inner scores):",
        "",
        markdown_table(pd.DataFrame(choices), index=False),
        "",
        "Per held-out section:",
        "",
        markdown_table(wide),
        "",
    ])  # fmt: skip
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "nested.md").write_text(text)
    payload = {"options": base, "candidates": candidates_of, "choices": choices, "total_s": total,
               "patient": table.to_dict(orient="records")}  # fmt: skip
    (output / "nested.json").write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()

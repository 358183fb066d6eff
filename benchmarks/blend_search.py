"""CMRCNet's decoder and blend: the search over all HER2ST patients that set their defaults.

Leave-one-patient-out over A, B and C (``tl.cross_validate``), for each seed and each candidate training
setting of CMRCNet (regional grid, decoder weight); every fit predicts each held-out section at several
shares of retrieval in the prediction (``tl.predict(retrieval_weight=...)``), which cost no extra fit. The
score of a candidate is the mean over seeds of the mean Pearson r over held-out sections (HEG@50, HVG@50);
the best candidate and weight became the defaults (``ArchitectureConfig``). This is the "search over all
patients" of ``benchmarks/nested.py``; the nested estimate (the blend chosen inside each fold's training
patients) is ``nested.py --round 4``.

    python benchmarks/blend_search.py [--seeds 0 1 2] [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import BASE, load_sections

#: Candidate training settings (``architecture`` options of tl.fit).
CANDIDATES = {
    "decoder weight 1, grid 2": {"decoder_weight": 1.0, "reconstruction_grid": 2},
    "decoder weight 1, grid 3": {"decoder_weight": 1.0, "reconstruction_grid": 3},
    "decoder weight 3, grid 3": {"decoder_weight": 3.0, "reconstruction_grid": 3},
}
#: Shares of retrieval in the prediction (the rest is the decoder's).
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


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
    variants = {f"retrieval {w:g}": {"retrieval_weight": w} for w in WEIGHTS}
    rows = []
    for name, architecture in CANDIDATES.items():
        for seed in args.seeds:
            table = sthist.tl.cross_validate(
                sections, groups="patient", methods=["cmrcnet"], predict_variants=variants, token_cache=cache,
                fit_options={**BASE, "random_state": seed, "architecture": architecture},
            )  # fmt: skip
            table = table[table["gene_set"].isin(["HEG@50", "HVG@50"])]
            means = table.groupby(["variant", "gene_set"])["pearson_mean"].mean()
            rows += [{"candidate": name, "seed": seed, "variant": variant, "gene_set": gene_set, "r": r}
                     for (variant, gene_set), r in means.items()]  # fmt: skip
            print(name, seed, means.round(3).to_dict(), flush=True)
    for method in ("regression", "bleep"):  # for reference, on the same folds and seeds
        for seed in args.seeds:
            table = sthist.tl.cross_validate(
                sections, groups="patient", methods=[method], token_cache=cache,
                fit_options={**BASE, "random_state": seed},
            )  # fmt: skip
            means = (
                table[table["gene_set"].isin(["HEG@50", "HVG@50"])].groupby("gene_set")["pearson_mean"].mean()
            )
            rows += [{"candidate": f"{method} (baseline)", "seed": seed, "variant": "-", "gene_set": gene_set, "r": r}
                     for gene_set, r in means.items()]  # fmt: skip
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index=["candidate", "variant"], columns="gene_set", values="r", aggfunc="mean")
    wide["score"] = wide[["HEG@50", "HVG@50"]].mean(axis=1)
    spread = frame.pivot_table(index=["candidate", "variant"], columns="gene_set", values="r", aggfunc="std")
    wide = wide.join(spread.add_suffix(" std over seeds"))
    best = wide[~wide.index.get_level_values(0).str.endswith("(baseline)")]["score"].idxmax()
    text = "\n".join([
        "# CMRCNet's decoder and blend, searched over all HER2ST patients",
        "",
        f"Command: `python benchmarks/blend_search.py --seeds {' '.join(map(str, args.seeds))}` (2-core CPU, "
        "leave one patient out over A, B, C; tl.fit defaults otherwise; tl.predict at each share of retrieval). "
        f"Total {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "Mean over seeds of the mean Pearson r over held-out sections (score: mean of HEG@50 and HVG@50):",
        "",
        markdown_table(wide.round(4)),
        "",
        f"Best: {best[0]}, {best[1]}.",
    ])  # fmt: skip
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "blend_search.md").write_text(text + "\n")
    (output / "blend_search.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

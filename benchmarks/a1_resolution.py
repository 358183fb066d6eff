"""A1, the coarsest HER2ST image (3.19 µm/px): does a coarser training patch help such a section?

Patient A held out (trained on B4 and C2-C6, as the leave-one-patient-out fold of ``accuracy.py``), CMRCNet at
its defaults with the patch at 112 µm (0.5 µm/px at the encoder's 224 px: A1's patches upsampled 6.4×) and at
224 µm (1 µm/px: upsampled 3.2×, and four times the tissue around each spot), over seeds. Scores on A1:
HEG@50, HVG@50 and ERBB2 AUROC (invasive cancer against the other labelled spots).

    python benchmarks/a1_resolution.py [--seeds 0 1 2] [--output benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
from accuracy import BASE, _evaluate, load_sections


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    train = {name: sdata for name, sdata in sections.items() if not name.startswith("A")}
    cache = TokenCache()
    rows = []
    for patch_size_um in (112.0, 224.0):
        for seed in args.seeds:
            model = sthist.tl.fit(
                train, token_cache=cache, patch_size_um=patch_size_um, random_state=seed, **BASE
            )
            records, auroc = _evaluate(
                sections["A1"], model, "cmrcnet", {}, cache, BASE["qc_column"], auroc=True
            )
            scores = {r["gene_set"]: r["pearson_mean"] for r in records}
            rows.append(
                {
                    "patch (µm)": patch_size_um,
                    "µm/px": patch_size_um / model.patch.size_px,
                    "A1 upsampled": 3.19 / (patch_size_um / model.patch.size_px),
                    "seed": seed,
                    "HEG@50": scores["HEG@50"],
                    "HVG@50": scores["HVG@50"],
                    "ERBB2 AUROC": auroc,
                }
            )
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    summary = (
        frame.groupby(["patch (µm)", "µm/px", "A1 upsampled"])[["HEG@50", "HVG@50", "ERBB2 AUROC"]]
        .agg(["mean", "std"])
        .round(3)
    )
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    out = Path(args.output) / "a1_resolution.md"
    out.write_text(
        "# A1 and the training patch's resolution\n\n"
        f"Command: `python benchmarks/a1_resolution.py --seeds {' '.join(map(str, args.seeds))}` (2-core CPU, "
        f"{torch.get_num_threads()} torch threads, machine otherwise idle; MALLOC_MMAP_THRESHOLD_="
        f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}). Total {(time.perf_counter() - start) / 60:.1f} min.\n\n"
        "Patient A held out; CMRCNet at its defaults but for the patch. Mean and standard deviation over seeds:\n\n"
        + markdown_table(summary.reset_index(), index=False)
        + "\n\nPer seed:\n\n"
        + markdown_table(frame, index=False)
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

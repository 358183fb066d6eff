"""How much the HER2ST leave-one-patient-out scores move with the random seed alone.

The trainable methods at their defaults (as in ``accuracy.py``), fitted with other seeds on the same folds and
token cache; seed 0 is ``accuracy.py``'s. Ridge is deterministic and left out. Prints and writes the mean over
held-out sections per method and seed, and the mean and spread over seeds.

    python benchmarks/seeds.py [--seeds 1 2 3] [--output benchmarks/results]

Run on an idle machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from accuracy import BASE, load_sections, run_arms, summarise

METHODS = ["cmrcnet", "bleep", "regression"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import pandas as pd

    import sthist
    from sthist._core._report import markdown_table
    from sthist.data import TokenCache

    sthist.settings.progress = False
    start = time.perf_counter()
    sections = load_sections()
    cache = TokenCache()
    sthist.tl.fit(sections, method="bleep", token_cache=cache, **{**BASE, "max_epochs": 1})
    frames = []
    for seed in args.seeds:
        rows, _, _ = run_arms(
            sections, {m: (m, {}) for m in METHODS}, groups="patient",
            base={**BASE, "random_state": seed}, token_cache=cache,
        )  # fmt: skip
        _, mean = summarise(rows, METHODS)
        frames.append(mean[["HEG@50", "HVG@50"]].assign(seed=seed).reset_index())
        print(frames[-1].to_string(index=False), flush=True)
    table = pd.concat(frames)
    spread = table.groupby("method")[["HEG@50", "HVG@50"]].agg(["mean", "std", "min", "max"]).loc[METHODS]
    spread.columns = [f"{score} {stat}" for score, stat in spread.columns]
    lines = [
        "# Seed spread of the leave-one-patient-out scores (HER2ST)",
        "",
        f"Command: `python benchmarks/seeds.py --seeds {' '.join(map(str, args.seeds))}` (2-core CPU, machine "
        f"otherwise idle; tl.fit and tl.predict defaults, as accuracy.py; seed 0 is accuracy.py's run). Total "
        f"{(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "Mean over held-out sections, per seed:",
        "",
        markdown_table(table.round(3).to_dict("records")),
        "",
        "Over these seeds:",
        "",
        markdown_table(spread.round(3).reset_index().to_dict("records")),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "seeds.md").write_text(text)


if __name__ == "__main__":
    main()

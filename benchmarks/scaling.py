"""How cost grows with the number of spots: fast-path training, retrieval bank, retrieval, memory.

Synthetic data at 1k, 10k and 100k spots with the shapes of the default model (EfficientNet-Lite0 tokens:
49 × 1,280, fp16; 250 + 250 genes at most, here 400; CMRCNet and BLEEP heads). Tokens come from a pool of
1,000 distinct patches indexed cyclically, so that 100k spots fit in memory; the token cache sthist keeps
for real spots is sized exactly below (spots × views × 49 × 1,280 × 2 bytes). For each size: one training
epoch through the Lightning plan (spots/s), building the retrieval bank, retrieving for 2,000 queries, and
the peak resident memory of each stage (Linux VmHWM, reset before each stage).

    python benchmarks/scaling.py [--sizes 1000 10000 100000]

Run on an idle machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

TOKENS, CHANNELS, GENES, POOL, QUERIES = 49, 1280, 400, 1000, 2000


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class _Cycled(torch.utils.data.Dataset):
    """``n`` spots whose tokens cycle through a pool; expression is each spot's own."""

    def __init__(self, pool: torch.Tensor, expression: torch.Tensor):
        self.pool, self.expression = pool, expression

    def __len__(self) -> int:
        return len(self.expression)

    def __getitem__(self, index: int) -> dict:
        return {"tokens": self.pool[index % len(self.pool)], "expression": self.expression[index]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist.models import ArchitectureConfig, TrainingConfig, get_method
    from sthist.models._training import fit_module

    sthist.settings.progress = False
    torch.manual_seed(0)
    pool = torch.randn(POOL, TOKENS, CHANNELS).half()
    rows = []
    for n in args.sizes:
        expression = torch.rand(n, GENES) * 5
        for name in ("bleep", "cmrcnet"):
            method = get_method(name)
            module = method.build(
                token_dim=CHANNELS, n_genes=GENES, architecture=ArchitectureConfig(context_um=None)
            )
            training = TrainingConfig(max_epochs=1, batch_size=64, learning_rate=1e-3, views=1)
            _reset_peak()
            tick = time.perf_counter()
            fit_module(
                module, None, _Cycled(pool, expression), training, random_state=0, gpu=False,
                accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision=None,
                checkpoint_dir=None, resume_from=None,
            )  # fmt: skip
            train_s = time.perf_counter() - tick
            train_peak = _peak_gib()
            module.eval()
            _reset_peak()
            tick = time.perf_counter()
            state = method.reference(module, expression)
            bank_s = time.perf_counter() - tick
            bank_bytes = sum(t.numel() * t.element_size() for t in state.values())
            queries = pool[:QUERIES].repeat((QUERIES + POOL - 1) // POOL, 1, 1)[:QUERIES]
            tick = time.perf_counter()
            method.predict(module, state, queries, 50)
            query_s = time.perf_counter() - tick
            retrieval_peak = _peak_gib()
            rows.append(
                {
                    "spots": n,
                    "method": name,
                    "train 1 epoch (s)": round(train_s, 2),
                    "spots/s": round(n / train_s),
                    "train peak RSS (GiB)": round(train_peak, 2),
                    "bank build (s)": round(bank_s, 3),
                    "bank (MiB)": round(bank_bytes / 2**20, 1),
                    f"{QUERIES} queries (s)": round(query_s, 3),
                    "retrieval peak RSS (GiB)": round(retrieval_peak, 2),
                    "token cache, 1 view (GiB)": round(n * TOKENS * CHANNELS * 2 / 2**30, 2),
                }
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Cost as the number of spots grows (synthetic, default model shapes)",
            "",
            f"Command: `python benchmarks/scaling.py --sizes {' '.join(map(str, args.sizes))}`; "
            f"{torch.get_num_threads()} torch threads, CPU. One training epoch at batch 64 (lr 1e-3); bank = "
            f"normalised spot embeddings + expression ({GENES} genes); {QUERIES} queries, k = 50. Peak RSS is "
            "the process's (libraries included), reset before each stage. The last column is the size of the "
            "token cache sthist keeps for that many real spots per dihedral view (fp16 tokens of "
            f"EfficientNet-Lite0: {TOKENS} × {CHANNELS}).",
            "",
            markdown_table(rows),
            "",
        ]
    )
    print(text)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "scaling.md").write_text(text)
    (output / "scaling.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

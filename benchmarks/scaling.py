"""How cost grows with the number of spots: fast-path training, retrieval bank, retrieval, memory.

Synthetic data at 1k, 10k and 100k spots with the shapes of the default model (EfficientNet-Lite0 tokens:
a 7 × 7 grid of 1,280 channels, fp16; 250 + 250 genes at most, here 400; CMRCNet and BLEEP heads). Every
spot has its own tokens, held as sthist holds them (:func:`sthist.data.summarise_tokens`): for training the
3 × 3 regional summary (10 tokens), for prediction the mean token. For each size: one training epoch through
the Lightning plan (spots/s), building the retrieval bank, predicting every spot from its mean token
(embedding + retrieval, k = 50), and the peak resident memory of each stage (Linux VmHWM, reset before each
stage), with the memory the held tokens take per 100k spots and dihedral view. Before the first size, patches
are encoded once (``sthist.data.encode_patches``, EfficientNet-Lite0, 224 px, a toy section's spots) as a fit
does before it trains: the allocator state that training and retrieval then start from is a real fit's
(``settings.retain_freed_memory`` applies while encoding).

    python benchmarks/scaling.py [--sizes 1000 10000 100000]

Run on an idle machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

GRID, CHANNELS, GENES, SUMMARY = 7, 1280, 400, 10


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _encode_patches() -> dict:
    """Encode a toy section's patches (EfficientNet-Lite0, 224 px), as ``tl.fit`` does before training."""
    import sthist
    from sthist.data import SpotPatchDataset, encode_patches
    from sthist.models import create_encoder

    section = sthist.datasets.toy(1, grid=18, n_genes=20, random_state=0)["toy0"]
    dataset = SpotPatchDataset(section, patch_size_um=112, patch_size_px=224)
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    _reset_peak()
    tick = time.perf_counter()
    encode_patches(dataset, encoder, batch_size=16, grid=3)
    seconds = time.perf_counter() - tick
    return {
        "patches": len(dataset),
        "patches/s": round(len(dataset) / seconds, 1),
        "peak RSS (GiB)": round(_peak_gib(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--output", default="benchmarks/results")
    args = parser.parse_args()

    import sthist
    from sthist._core._report import markdown_table
    from sthist._settings import retained_memory
    from sthist.data import TokenDataset, summarise_tokens
    from sthist.models import ArchitectureConfig, TrainingConfig, get_method
    from sthist.models._training import fit_module

    sthist.settings.progress = False
    torch.manual_seed(0)
    encoding = _encode_patches()
    print(encoding, flush=True)
    rows = []
    for n in args.sizes:
        expression = torch.rand(n, GENES) * 5
        # Each spot's tokens, summarised in chunks as encode_patches does batch by batch.
        summaries = torch.empty((n, 1, SUMMARY, CHANNELS), dtype=torch.float16)
        means = torch.empty((n, 1, CHANNELS), dtype=torch.float16)
        for start in range(0, n, 1024):
            raw = torch.randn(min(1024, n - start), GRID * GRID, CHANNELS)
            summaries[start : start + len(raw), 0] = summarise_tokens(raw, 3).half()
            means[start : start + len(raw)] = summarise_tokens(raw, 1).half()
        for name in ("bleep", "cmrcnet"):
            method = get_method(name)
            module = method.build(
                token_dim=CHANNELS, n_genes=GENES, architecture=ArchitectureConfig(context_um=None)
            )
            training = TrainingConfig(max_epochs=1, batch_size=64, learning_rate=1e-3, views=1)
            _reset_peak()
            tick = time.perf_counter()
            fit_module(
                module, None, TokenDataset(summaries, expression), training, random_state=0, gpu=False,
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
            tick = time.perf_counter()
            with retained_memory():  # as tl.predict retrieves
                for chunk in means.split(256):
                    method.predict(module, state, chunk, 50)
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
                    "predict all (s)": round(query_s, 2),
                    "predict peak RSS (GiB)": round(retrieval_peak, 2),
                }
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Cost as the number of spots grows (synthetic, default model shapes)",
            "",
            f"Command: `python benchmarks/scaling.py --sizes {' '.join(map(str, args.sizes))}`; "
            f"{torch.get_num_threads()} torch threads, CPU. One training epoch at batch 64 (lr 1e-3) on each "
            f"spot's own summarised tokens ({SUMMARY} × {CHANNELS}, fp16); bank = normalised spot embeddings + "
            f"expression ({GENES} genes); every spot predicted from its mean token, k = 50. Peak RSS is the "
            "process's (libraries and the held tokens included), reset before each stage.",
            "",
            f"Encoding first (as a fit does): {encoding['patches']} patches at {encoding['patches/s']} "
            f"patches/s, peak RSS {encoding['peak RSS (GiB)']} GiB; MALLOC_MMAP_THRESHOLD_="
            f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}, "
            f"settings.retain_freed_memory={sthist.settings.retain_freed_memory}.",
            "",
            "Held tokens per 100k spots and dihedral view: "
            f"{100_000 * SUMMARY * CHANNELS * 2 / 2**30:.2f} GiB for training (3 × 3 summary), "
            f"{100_000 * CHANNELS * 2 / 2**30:.2f} GiB for prediction (mean token); every token of the "
            f"{GRID} × {GRID} grid would take {100_000 * GRID * GRID * CHANNELS * 2 / 2**30:.2f} GiB.",
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

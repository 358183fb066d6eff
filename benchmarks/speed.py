"""Speed benchmark: encoding, training, prediction and retrieval throughput, in one run.

Figures are ratios to a reference measured in the same run where one exists:
- token extraction through sthist (patch cutting + normalisation + encoder) vs the bare backbone forward on
  the same batches (target ≥ 0.9);
- training throughput of the fast path (cached tokens) and of end-to-end fine-tuning (spots/s);
- a CMRCNet fit against a BLEEP fit at the same (default) settings on cached tokens of two sections (C5, C6):
  the ratio of their times, target ≤ 3 (the reconstruction branch's cost), and CMRCNet reconstructing every
  spot of each batch (``reconstruction_share=1``) against the default half;
- prediction throughput (spots/s, patches → retrieval) and retrieval time for a 100k-spot bank × 10k queries;
- peak resident memory.

    python benchmarks/speed.py [--spots 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spots", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args()

    import lightning as L
    import torch

    import sthist
    from sthist._core._report import markdown_table
    from sthist._settings import retained_memory
    from sthist.data import SpotPatchDataset, TokenDataset, encode_patches
    from sthist.models import ArchitectureConfig, TrainingConfig, create_encoder, get_method, retrieve
    from sthist.models._training import TrainingModule

    def cmrcnet():
        return get_method("cmrcnet").build(
            token_dim=1280, n_genes=300, architecture=ArchitectureConfig(context_um=None)
        )

    sthist.settings.progress = False
    device = args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sections = sthist.datasets.her2st(["C2", "C3"], check_registration=False)
    dataset = SpotPatchDataset(sections)
    indices = list(range(min(args.spots, len(dataset))))
    encoder = create_encoder("efficientnet_lite0").to(device).eval()
    rows = []

    # 1. Token extraction vs the bare backbone on the same (pre-cut) batches.
    batches = [
        torch.stack(
            [torch.from_numpy(dataset.patch(i)).permute(2, 0, 1) for i in indices[s : s + args.batch_size]]
        )
        for s in range(0, len(indices), args.batch_size)
    ]
    mean = torch.tensor(encoder.config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.config.std, device=device).view(1, 3, 1, 1)
    normalised = [((b.to(device).float() / 255) - mean) / std for b in batches]
    # The bare forward under the allocator setting encode_patches runs under (settings.retain_freed_memory).
    with torch.inference_mode(), retained_memory():
        encoder.model.forward_features(normalised[0])  # warm-up
        _sync(device)
        tick = time.perf_counter()
        for batch in normalised:
            encoder.model.forward_features(batch)
        _sync(device)
        bare = len(indices) / (time.perf_counter() - tick)
    tick = time.perf_counter()
    encode_patches(dataset, encoder, views=1, batch_size=args.batch_size, device=device, indices=indices)
    _sync(device)
    ours = len(indices) / (time.perf_counter() - tick)
    rows.append(
        {"measure": "bare backbone forward (reference)", "value": f"{bare:.1f} spots/s", "ratio": "1.00"}
    )
    rows.append(
        {
            "measure": "sthist token extraction (cut + resample + encode)",
            "value": f"{ours:.1f} spots/s",
            "ratio": f"{ours / bare:.2f}",
        }
    )

    # 2. Training throughput: fast path on cached tokens, and end-to-end fine-tuning.
    tokens = torch.randn(len(indices), 2, 49, 1280).half()
    expression = torch.rand(len(indices), 300)
    for name, module, data in [
        ("fast path (cached tokens), cmrcnet", TrainingModule(cmrcnet(), training=TrainingConfig()), TokenDataset(tokens, expression)),
        ("fine-tuning EfficientNet-Lite0, cmrcnet", TrainingModule(cmrcnet(), create_encoder("efficientnet_lite0"), training=TrainingConfig()), _ImageData(batches, expression)),
    ]:  # fmt: skip
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
        precision = "bf16-mixed" if (device == "cuda" and module.encoder is not None) else "32-true"
        trainer = L.Trainer(
            max_epochs=2, accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, precision=precision,
        )  # fmt: skip
        tick = time.perf_counter()
        with retained_memory() if module.encoder is not None else contextlib.nullcontext():  # as fit_module
            trainer.fit(module, loader)
        _sync(device)
        seconds = time.perf_counter() - tick
        rows.append(
            {
                "measure": f"training, {name} ({precision})",
                "value": f"{2 * len(loader) * args.batch_size / seconds:.1f} spots/s",
                "ratio": "",
            }
        )

    # 2b. CMRCNet's fit against BLEEP's, both at the defaults, on the same cached tokens (fast path).
    from sthist.data import TokenCache

    fit_sections = {name: sthist.datasets.her2st([name])[name] for name in ("C5", "C6")}
    cache = TokenCache()
    options = {"token_cache": cache, "random_state": 0, "accelerator": "gpu" if device == "cuda" else "cpu"}
    sthist.tl.fit(fit_sections, method="bleep", max_epochs=1, **options)  # encodes every view once
    seconds = {}
    fits = {
        "bleep": {"method": "bleep"},
        "cmrcnet": {"method": "cmrcnet"},
        "every spot": {"method": "cmrcnet", "architecture": {"reconstruction_share": 1.0}},
    }
    for name, fit_options in fits.items():
        tick = time.perf_counter()
        sthist.tl.fit(fit_sections, **fit_options, **options)
        seconds[name] = time.perf_counter() - tick
    epochs = TrainingConfig().max_epochs
    rows.append(
        {
            "measure": f"fit, bleep (defaults: {epochs} epochs, cached tokens, C5+C6)",
            "value": f"{seconds['bleep']:.1f} s",
            "ratio": "1.00",
        }
    )
    rows.append({"measure": "fit, cmrcnet (same settings and tokens)", "value": f"{seconds['cmrcnet']:.1f} s", "ratio": f"{seconds['cmrcnet'] / seconds['bleep']:.2f}"})  # fmt: skip
    rows.append({"measure": "fit, cmrcnet reconstructing every spot (reconstruction_share 1)", "value": f"{seconds['every spot']:.1f} s", "ratio": f"{seconds['every spot'] / seconds['bleep']:.2f}"})  # fmt: skip

    # 3. Prediction throughput (a fitted model on C2 → C3).
    model = sthist.tl.fit(
        {"C2": sections["C2"]},
        method="cmrcnet",
        max_epochs=1,
        training={"views": 1},
        k=20,
        accelerator="gpu" if device == "cuda" else "cpu",
    )
    tick = time.perf_counter()
    sthist.tl.predict(sections["C3"], model, inplace=False, device=device)
    _sync(device)
    spots = sections["C3"].tables["table"].n_obs
    rows.append(
        {
            "measure": "prediction (patches → tokens → retrieval)",
            "value": f"{spots / (time.perf_counter() - tick):.1f} spots/s",
            "ratio": "",
        }
    )

    # 4. Retrieval: 100k-spot bank × 10k queries, d = 256, k = 50.
    generator = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(100_000, 256, generator=generator), dim=1).to(device)
    queries = torch.nn.functional.normalize(torch.randn(10_000, 256, generator=generator), dim=1).to(device)
    tick = time.perf_counter()
    retrieve(queries, bank, 50)
    _sync(device)
    rows.append(
        {
            "measure": "retrieval, 100k bank × 10k queries, k = 50",
            "value": f"{time.perf_counter() - tick:.2f} s",
            "ratio": "",
        }
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows.append({"measure": "peak resident memory", "value": f"{peak:.2f} GiB", "ratio": ""})
    if device == "cuda":
        rows.append(
            {
                "measure": "peak GPU memory",
                "value": f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
                "ratio": "",
            }
        )

    where = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"device: {where}; {len(indices)} HER2ST patches (C2/C3), batch {args.batch_size}; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}\n"
    )
    print(markdown_table(rows))


class _ImageData:
    """Pre-cut uint8 patches with expression, for the fine-tuning measurement."""

    def __init__(self, batches, expression):
        import torch

        self.images = torch.cat(batches)
        self.expression = expression

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "expression": self.expression[index]}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()

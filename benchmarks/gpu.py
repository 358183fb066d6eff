"""GPU check and speed figures of the model code (encoders, fine-tuning, fast path, retrieval), in one run.

Encoders: sthist's own (EfficientNet-Lite0, the CMRCNet ViT-B/32) and the pathology encoders' architectures
(ViT-L/16 as UNI, ViT-g/14 as H-optimus-0), with random weights.

Needs only torch, timm and lightning (what a bare GPU machine has), so the images are synthetic: each patch is
noise tinted by a latent tissue state that also drives the expression of 250 genes. That makes the
fine-tuning run a learnability check as well as a timing: after a few bf16 epochs on the GPU, retrieval
must recover held-out expression (mean Pearson r across genes), as it does on the CPU.

    python benchmarks/gpu.py [--out results.md]
    python benchmarks/gpu.py --smoke   # tiny sizes on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import numpy as np
import torch

from sthist.models import ArchitectureConfig, TrainingConfig, create_encoder, get_method, retrieve
from sthist.models._training import TrainingModule


class SyntheticSpots(torch.utils.data.Dataset):
    """uint8 patches (noise tinted by a 3-d latent state) and log1p expression driven by the same state."""

    def __init__(self, n: int, genes: int = 250, size: int = 224, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.state = torch.rand(n, 3, generator=generator)
        noise = torch.randint(0, 128, (n, 3, size, size), generator=generator, dtype=torch.uint8)
        self.images = noise + (self.state * 127).to(torch.uint8)[:, :, None, None]
        weights = torch.randn(3, genes, generator=torch.Generator().manual_seed(1))
        latent = self.state @ weights + 0.3 * torch.randn(n, genes, generator=generator)
        self.expression = torch.log1p(torch.relu(2 * latent + 1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "expression": self.expression[index]}


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync()
        self.times.append(time.perf_counter() - self._start)


SMOKE = False
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(function, repeats: int) -> float:
    function()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    sync()
    return (time.perf_counter() - start) / repeats


def cmrcnet(token_dim: int, genes: int):
    """CMRCNet's trainable modules at the default architecture."""
    return get_method("cmrcnet").build(
        token_dim=token_dim, n_genes=genes, architecture=ArchitectureConfig(context_um=None)
    )


def trainer(epochs: int, precision: str, timer: EpochTimer) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="gpu" if DEVICE == "cuda" else "cpu", devices=1, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip


class SyntheticCrops:
    """Crops of a textured slide around spots, as ``SpotPatchDataset`` gives them (``crop``, ``patch``, ``view``).

    112 µm patches at 0.688 µm/px (HER2ST's level 0): 163 px boxes with sub-pixel edges, resampled to 224 px.
    """

    patch_size_px = 224
    stain_reference = None

    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randint(0, 256, (n, 166, 166, 3), generator=generator, dtype=torch.uint8).numpy()
        self.offsets = torch.rand(n, 2, generator=generator).numpy()

    def __len__(self) -> int:
        return len(self.pixels)

    def crop(self, index: int):
        x0, y0 = 1 + self.offsets[index]
        return self.pixels[index], (x0, y0, x0 + 162.8, y0 + 162.8)

    def crop_shape(self, indices) -> tuple[int, int]:
        return 166, 166

    def patch(self, index: int):
        from PIL import Image

        crop, box = self.crop(index)
        size = self.patch_size_px
        return np.array(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR, box=box))

    def view(self, index, view, jitter=0.0, base=None):
        from sthist.data import dihedral

        patch = self.patch(index) if base is None else base
        return np.ascontiguousarray(dihedral(patch, view)) if view else patch


def patch_encoding_rows(scale: int) -> list[tuple[str, str]]:
    """Patches → tokens through ``encode_patches`` against the bare encoder on batches of the same shape.

    Resampling on the device (the default on a GPU: crops cut on the CPU, resampled by batched matrix products
    there) and on the CPU (PIL, one reader thread). Skipped where ``sthist.data`` cannot be imported.
    """
    try:
        from sthist.data import encode_patches
    except ImportError as error:
        return [("encode_patches vs bare encoder", f"skipped: {error}")]
    encoder = create_encoder("efficientnet_lite0", pretrained=False).to(DEVICE).eval()
    batch_size = 256 // scale
    dataset = SyntheticCrops(8 * batch_size)
    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=DEVICE)
    from sthist._settings import retained_memory

    # Under the host allocator setting encode_patches runs under (settings.retain_freed_memory).
    with torch.inference_mode(), retained_memory():
        bare = len(batch) / timed(lambda: encoder(batch), 8)
    rows = [("encoder alone, efficientnet_lite0 fp32, batch 256", f"{bare:,.0f} patches/s")]
    for where, on_device in (("on the device", True), ("on the CPU (PIL, one thread)", False)):

        def run(on_device=on_device):
            encode_patches(
                dataset, encoder, batch_size=batch_size, device=DEVICE, resample_on_device=on_device
            )

        rate = len(dataset) / timed(run, 1)
        rows.append(
            (
                f"encode_patches, resampling {where}",
                f"{rate:,.0f} patches/s ({rate / bare:.2f} of the encoder)",
            )
        )
    return rows


def foundation_encoder_rows(smoke: bool) -> list[tuple[str, str]]:
    """Encoding throughput of a ViT-L/16 (UNI's architecture) and a ViT-g/14 (H-optimus-0's), fp32 and bf16.

    What encoding a section once costs with the pathology encoders before its features are kept
    (``docs/encoders.md``): random weights (the published ones are not reachable from these machines, and the
    speed does not depend on them), uint8 batches of 224 px patches already on the device. A smoke run builds
    them two blocks deep on batches of 2.
    """
    rows = []
    for name, label in (
        ("uni", "ViT-L/16 as UNI, 303 M parameters"),
        ("h_optimus_0", "ViT-g/14 as H-optimus-0, 1.13 B parameters"),
    ):
        encoder = create_encoder(name, pretrained=False, **({"depth": 2} if smoke else {})).to(DEVICE).eval()
        batch = torch.randint(0, 256, (2 if smoke else 64, 3, 224, 224), dtype=torch.uint8, device=DEVICE)
        for precision in ("fp32", "bf16"):
            with torch.inference_mode(), torch.autocast(DEVICE, torch.bfloat16, enabled=precision == "bf16"):
                seconds = timed(lambda encoder=encoder, batch=batch: encoder(batch), 1 if smoke else 5)
            rows.append(
                (
                    f"encode {name} ({'cut to 2 blocks' if smoke else label}) {precision}, batch {len(batch)}",
                    f"{len(batch) / seconds:,.0f} patches/s",
                )
            )
        del encoder
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    global DEVICE
    scale = 1
    if args.smoke:
        DEVICE, scale, args.epochs = "cpu", 64, 2
    else:
        assert torch.cuda.is_available(), "no GPU visible"
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run)"
    lines = [f"device: {name}, torch {torch.__version__}", ""]
    rows = []

    # 1. Encoder inference throughput, fp32 and bf16 autocast, uint8 batches already on the GPU.
    for name in ("efficientnet_lite0", "cmrcnet_vit"):
        encoder = create_encoder(name, pretrained=False).to(DEVICE).eval()
        size = encoder.config.input_size
        batch = torch.randint(0, 256, (256 // scale, 3, size, size), dtype=torch.uint8, device=DEVICE)
        for precision in ("fp32", "bf16"):
            with torch.inference_mode(), torch.autocast(DEVICE, torch.bfloat16, enabled=precision == "bf16"):
                seconds = timed(lambda encoder=encoder, batch=batch: encoder(batch), 10)
            rows.append((f"encode {name} {precision}, batch 256", f"{len(batch) / seconds:,.0f} patches/s"))
    rows += foundation_encoder_rows(args.smoke)

    # 2. Fine-tuning (encoder + CMRCNet, bf16-mixed) on learnable synthetic spots; then retrieval on held-out.
    train, test = (
        SyntheticSpots(3072 // scale * 4 if args.smoke else 3072, seed=0),
        SyntheticSpots(512 // scale * 4 if args.smoke else 512, seed=2),
    )
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    model = cmrcnet(encoder.embed_dim, 250)
    module = TrainingModule(
        model, encoder, training=TrainingConfig(learning_rate=1e-3, max_epochs=args.epochs)
    )
    loader = torch.utils.data.DataLoader(
        train, batch_size=128, shuffle=True, drop_last=True, num_workers=4, pin_memory=True
    )
    timer = EpochTimer()
    trainer(args.epochs, "bf16-mixed" if DEVICE == "cuda" else "32-true", timer).fit(module, loader)
    steady = sum(timer.times[1:]) / max(len(timer.times) - 1, 1)
    rows.append(
        ("fine-tune lite0 + CMRCNet, bf16-mixed, batch 128", f"{len(loader) * 128 / steady:,.0f} spots/s")
    )
    rows.append(("  first epoch (cudnn autotune, workers start)", f"{timer.times[0]:.1f} s"))
    losses = [round(r["loss"], 3) for r in module.history]
    module = module.to(DEVICE).eval()
    with torch.inference_mode(), torch.autocast(DEVICE, torch.bfloat16, enabled=DEVICE == "cuda"):
        bank = torch.nn.functional.normalize(model.spot_embedding(train.expression.to(DEVICE)).float(), dim=1)
        query = torch.cat(
            [model.image_embedding(encoder(chunk.to(DEVICE))).float() for chunk in test.images.split(256)]
        )
        query = torch.nn.functional.normalize(query, dim=1)
        neighbours = retrieve(query, bank, 50)
    predicted = train.expression[neighbours].mean(dim=1)
    observed = test.expression
    centred = [(x - x.mean(0)) / x.std(0) for x in (observed, predicted)]
    r = (centred[0] * centred[1]).mean(0) * len(observed) / (len(observed) - 1)
    defined = r[torch.isfinite(r)]
    rows.append(
        (
            f"held-out mean Pearson r over {len(defined)} non-constant genes (k = 50)",
            f"{float(defined.mean()):.3f}",
        )
    )
    rows.append(("loss per epoch", ", ".join(map(str, losses))))

    # 3. Fast path: cached tokens (fp16, 49 × 1280 per spot) → CMRCNet heads only, fp32.
    n = 20_000 // scale
    tokens = torch.randn(n, 49, encoder.config.embed_dim, dtype=torch.float16)
    expression = torch.rand(n, 250)
    token_data = [{"tokens": tokens[i], "expression": expression[i]} for i in range(n)]
    for batch_size in (64, 512 // (8 if args.smoke else 1)):
        model = cmrcnet(encoder.embed_dim, 250)
        module = TrainingModule(model, None, training=TrainingConfig(max_epochs=3))
        loader = torch.utils.data.DataLoader(token_data, batch_size=batch_size, shuffle=True, drop_last=True)
        timer = EpochTimer()
        trainer(3, "32-true", timer).fit(module, loader)
        steady = sum(timer.times[1:]) / 2
        rows.append(
            (
                f"fast path CMRCNet, fp32, batch {batch_size}",
                f"{len(loader) * batch_size / steady:,.0f} spots/s",
            )
        )

    # 4. Retrieval: 100k-spot bank × 10k queries, GPU vs this machine's CPU.
    bank = torch.nn.functional.normalize(torch.randn(100_000 // scale, 256), dim=1)
    query = torch.nn.functional.normalize(torch.randn(10_000 // scale, 256), dim=1)
    start = time.perf_counter()
    on_cpu = retrieve(query, bank, 50)
    cpu_seconds = time.perf_counter() - start
    gpu_seconds = timed(lambda: retrieve(query.to(DEVICE), bank.to(DEVICE), 50), 3)
    on_gpu = retrieve(query.to(DEVICE), bank.to(DEVICE), 50)
    same = float((on_cpu.sort(1).values == on_gpu.cpu().sort(1).values).all(1).float().mean())
    rows.append(("retrieval 100k bank × 10k queries, k = 50: GPU", f"{gpu_seconds:.3f} s"))
    rows.append(("  same on the CPU (16 cores)", f"{cpu_seconds:.2f} s ({cpu_seconds / gpu_seconds:.0f}×)"))
    rows.append(("  queries with identical neighbour sets, GPU vs CPU", f"{same:.4f}"))
    rows += patch_encoding_rows(scale)
    if DEVICE == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"))

    lines += ["| measure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()

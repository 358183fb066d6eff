"""Does fine-tuning the encoder help? Frozen vs fine-tuned EfficientNet-Lite0 on HER2ST, leave one patient out, GPU.

Two steps, because the GPU machine has torch/timm/lightning but not the spatialdata stack:

    python benchmarks/finetune_gpu.py export .gpudata   # here: patches (JPEG q95), expression, panels, weights
    python benchmarks/finetune_gpu.py run .gpudata       # on the GPU: every variant on the same folds

``export`` cuts the same 112 µm / 224 px patches as ``tl.fit`` (QC'd spots of A1, B4, C2–C6) and chooses each
fold's gene panel from its training sections only, as ``tl.fit`` does. ``run`` trains, per held-out patient,
CMRCNet and direct regression with the frozen encoder (tokens of 4 dihedral views, as the accuracy benchmark)
and fine-tuned end to end (bf16, a random dihedral view per step), with the model code of ``sthist.models``,
and evaluates each held-out section (mean Pearson r over its HEG@50 / HVG@50 / all panel genes). All arms see
the same JPEG-compressed patches, so they compare with each other; against ``accuracy.md`` they differ by the
compression and by GPU arithmetic.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

SECTIONS = ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]
DEFAULT_ARMS = [
    ("cmrcnet", "frozen"),
    ("regression", "frozen"),
    ("cmrcnet", "fine-tuned, one lr"),
    ("cmrcnet", "fine-tuned, encoder lr/10"),
    ("regression", "fine-tuned, encoder lr/10"),
]


def export(folder: Path) -> None:
    import sys

    from PIL import Image
    from safetensors.torch import save_file

    import sthist
    from sthist.data import SpotPatchDataset
    from sthist.models import create_encoder

    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import load_sections

    folder.mkdir(parents=True, exist_ok=True)
    sthist.settings.progress = False
    sections = load_sections()
    for sdata in sections.values():
        sthist.pp.normalize(sdata.tables["table"])
    patient = {name: sdata.attrs["sthist"]["patient"] for name, sdata in sections.items()}
    panels = {}
    for held_out in sorted(set(patient.values())):
        train = {n: s for n, s in sections.items() if patient[n] != held_out}
        panels[held_out] = sthist.pp.select_genes(train, flavor="heg+hvg", n_top=250)
    genes = sorted(set().union(*panels.values()))
    dataset = SpotPatchDataset(sections, genes=genes, qc_column="sthist_pass_qc", patch_size_um=112.0)
    blobs = []
    for index in range(len(dataset)):
        buffer = io.BytesIO()
        Image.fromarray(dataset.patch(index)).save(buffer, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    spot_sections = dataset.spots["section"].to_numpy().astype(str)
    np.savez_compressed(
        folder / "her2st.npz",
        jpeg=np.concatenate(blobs),
        offsets=offsets,
        expression=dataset.expression.astype(np.float32),
        sections=spot_sections,
    )
    (folder / "her2st.json").write_text(json.dumps({"genes": genes, "panels": panels, "patient": patient}))
    encoder = create_encoder("efficientnet_lite0")
    save_file(
        {k: v.contiguous() for k, v in encoder.model.state_dict().items()}, folder / "lite0.safetensors"
    )
    print(
        f"exported {len(dataset)} spots, {len(genes)} genes, {offsets[-1] / 1e6:.1f} MB of JPEG to {folder}"
    )


def run(
    folder: Path,
    epochs: int,
    fine_tune_epochs: int,
    smoke: bool,
    out: Path | None,
    folds: list[str] | None,
    arm_names: list[str] | None,
) -> None:
    import lightning as L
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from sthist.models import ArchitectureConfig, TrainingConfig, create_encoder, get_method, retrieve
    from sthist.models._training import TrainingModule

    device = "cpu" if smoke else "cuda"
    torch.backends.cudnn.benchmark = not smoke
    meta = json.loads((folder / "her2st.json").read_text())
    data = np.load(folder / "her2st.npz")
    offsets, blob = data["offsets"], data["jpeg"]
    keep = np.arange(len(offsets) - 1)
    if smoke:
        keep = np.concatenate([np.flatnonzero(data["sections"] == s)[:12] for s in SECTIONS])
    images = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())))
            ).permute(2, 0, 1)
            for i in keep
        ]
    )
    expression_all = torch.from_numpy(data["expression"][keep])
    spot_sections = data["sections"][keep]
    gene_index = {g: i for i, g in enumerate(meta["genes"])}
    weights = load_file(folder / "lite0.safetensors")

    def encoder_fresh():
        encoder = create_encoder("efficientnet_lite0", pretrained=False)
        encoder.model.load_state_dict(weights)
        return encoder

    def dihedral(image: torch.Tensor, transform: int) -> torch.Tensor:  # image (3, H, W)
        out = torch.rot90(image, transform % 4, dims=(1, 2))
        return out.flip(2) if transform >= 4 else out

    class Patches(torch.utils.data.Dataset):
        def __init__(self, indices, expression):
            self.indices, self.expression = indices, expression

        def __len__(self):
            return len(self.indices)

        def __getitem__(self, i):
            view = int(torch.randint(8, (1,)))
            return {"image": dihedral(images[self.indices[i]], view), "expression": self.expression[i]}

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, tokens, expression):
            self.tokens, self.expression = tokens, expression

        def __len__(self):
            return len(self.tokens)

        def __getitem__(self, i):
            view = int(torch.randint(self.tokens.shape[1], (1,)))
            return {"tokens": self.tokens[i, view], "expression": self.expression[i]}

    class SplitRates(TrainingModule):
        """Encoder at a fraction of the heads' learning rate (the pretrained features move slowly)."""

        encoder_factor = 10.0

        def configure_optimizers(self):
            encoder = list(self.encoder.parameters())
            ids = {id(p) for p in encoder}
            heads = [p for p in self.parameters() if id(p) not in ids]
            optimizer = torch.optim.AdamW(
                [
                    {"params": heads, "lr": self.training_config.learning_rate},
                    {"params": encoder, "lr": self.training_config.learning_rate / self.encoder_factor},
                ],
                weight_decay=self.training_config.weight_decay,
            )
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.training_config.max_epochs, eta_min=1e-6
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    @torch.inference_mode()
    def tokens_of(encoder, indices, views):
        encoder = encoder.to(device).eval()
        out = []
        for view in range(views):
            chunks = []
            for start in range(0, len(indices), 256):
                batch = torch.stack([dihedral(images[i], view) for i in indices[start : start + 256]]).to(
                    device
                )
                with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
                    chunks.append(encoder(batch).float().cpu())
            out.append(torch.cat(chunks))
        return torch.stack(out, dim=1)

    def build(method, genes):
        return get_method(method).build(
            token_dim=1280, n_genes=genes, architecture=ArchitectureConfig(context_um=None)
        )

    def train(module, dataset, n_epochs, precision):
        L.seed_everything(0, verbose=False)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=8 if smoke else 64, shuffle=True, drop_last=True, num_workers=0 if smoke else 6,
            persistent_workers=not smoke,
        )  # fmt: skip
        trainer = L.Trainer(
            max_epochs=n_epochs, accelerator="cpu" if smoke else "gpu", devices=1, precision=precision,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module, loader)
        return module.model.to(device).eval()

    @torch.inference_mode()
    def predict(model, method, test_tokens, train_expression):
        test_tokens = test_tokens.to(device)
        if method == "regression":
            return model.regress(test_tokens).float().cpu()
        bank = torch.nn.functional.normalize(model.spot_embedding(train_expression.to(device)), dim=1)
        query = torch.nn.functional.normalize(model.image_embedding(test_tokens), dim=1)
        neighbours = retrieve(query, bank, min(50, len(bank))).cpu()
        return train_expression[neighbours].mean(dim=1)

    def scores(observed: np.ndarray, predicted: np.ndarray) -> dict:
        o = observed - observed.mean(0)
        p = predicted - predicted.mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (o * p).sum(0) / np.sqrt((o**2).sum(0) * (p**2).sum(0))
        heg = np.argsort(-observed.mean(0), kind="stable")[:50]
        hvg = np.argsort(-observed.var(0, ddof=1), kind="stable")[:50]
        return {"HEG@50": np.nanmean(r[heg]), "HVG@50": np.nanmean(r[hvg]), "all": np.nanmean(r)}

    rows, lines = [], []
    patient = meta["patient"]
    spot_patient = np.array([patient[s] for s in spot_sections])
    start_all = time.perf_counter()
    for held_out, panel in sorted(meta["panels"].items()):
        if folds and held_out not in folds:
            continue
        columns = [gene_index[g] for g in panel]
        train_idx = np.flatnonzero(spot_patient != held_out)
        test_idx = np.flatnonzero(spot_patient == held_out)
        expression = expression_all[:, columns]
        train_expression = expression[train_idx]
        frozen = encoder_fresh()
        train_tokens = tokens_of(frozen, train_idx, 4).half()
        test_tokens_frozen = tokens_of(frozen, test_idx, 1)[:, 0]
        arms = [tuple(a.split(":")) for a in arm_names] if arm_names else DEFAULT_ARMS
        for method, arm in arms:
            tick = time.perf_counter()
            model = build(method, len(panel))
            if arm == "frozen":
                module = TrainingModule(
                    model, None, training=TrainingConfig(learning_rate=1e-3, max_epochs=epochs)
                )
                model = train(module, Tokens(train_tokens, train_expression), epochs, "32-true")
                test_tokens = test_tokens_frozen
            else:
                encoder = encoder_fresh()
                if "encoder lr/" in arm:
                    module = SplitRates(
                        model,
                        encoder,
                        training=TrainingConfig(learning_rate=1e-3, max_epochs=fine_tune_epochs),
                    )
                    module.encoder_factor = float(arm.rsplit("/", 1)[1])
                else:
                    module = TrainingModule(
                        model,
                        encoder,
                        training=TrainingConfig(learning_rate=1e-3, max_epochs=fine_tune_epochs),
                    )
                precision = "32-true" if smoke else "bf16-mixed"
                model = train(module, Patches(train_idx, train_expression), fine_tune_epochs, precision)
                test_tokens = tokens_of(module.encoder, test_idx, 1)[:, 0]
            predicted = predict(model, method, test_tokens, train_expression).float().numpy()
            for section in sorted(set(spot_sections[test_idx])):
                rows_of = spot_sections[test_idx] == section
                result = scores(expression[test_idx][rows_of].numpy(), predicted[rows_of])
                rows.append(
                    {"held_out": held_out, "section": section, "method": method, "arm": arm, **result}
                )
            line = f"{held_out} {method:10s} {arm:28s} {time.perf_counter() - tick:6.1f} s"
            print(line, flush=True)
            lines.append(line)
            if out is not None:
                (out / "finetune_rows.json").write_text(json.dumps(rows, default=float))
    import pandas as pd

    table = pd.DataFrame(rows)
    summary = table.groupby(["method", "arm"])[["HEG@50", "HVG@50", "all"]].mean().round(3)
    text = "\n".join(
        [
            f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU smoke run'}; torch {torch.__version__}",
            f"frozen: {epochs} epochs on cached tokens (4 views); fine-tuned: {fine_tune_epochs} epochs; lr 1e-3 heads;"
            " batch 64; k 50; mean over the 7 held-out sections (leave one patient out)",
            f"total {time.perf_counter() - start_all:.0f} s",
            "",
            summary.to_markdown(),
            "",
            *lines,
        ]
    )
    print(text)
    if out is not None:
        (out / "finetune.md").write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["export", "run"])
    parser.add_argument("folder")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fine-tune-epochs", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="a few spots, 1 epoch, on the CPU")
    parser.add_argument("--out", default=None)
    parser.add_argument("--folds", nargs="*", default=None, help="held-out patients to run (default: all)")
    parser.add_argument(
        "--arms",
        nargs="*",
        default=None,
        help="'method:arm' pairs, e.g. 'cmrcnet:fine-tuned, encoder lr/100'",
    )
    args = parser.parse_args()
    if args.step == "export":
        export(Path(args.folder))
    else:
        epochs, fine = (1, 1) if args.smoke else (args.epochs, args.fine_tune_epochs)
        run(
            Path(args.folder),
            epochs,
            fine,
            args.smoke,
            Path(args.out) if args.out else None,
            args.folds,
            args.arms,
        )


if __name__ == "__main__":
    main()

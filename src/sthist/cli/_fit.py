"""``sthist fit``: fit a model on SpatialData zarr stores and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

from sthist._core._config import (
    DEFAULT_BACKBONE,
    METHOD_NAMES,
    ArchitectureConfig,
    DataConfig,
    PatchConfig,
    TrainingConfig,
    default_k,
    default_smooth_um,
)
from sthist.cli._common import UserError, check_devices, is_rank_zero, read_store, section_names
from sthist.cli._options import add_config_flags, config_values

#: The configurations whose every field is a flag of ``sthist fit``.
CONFIG_CLASSES = (TrainingConfig, ArchitectureConfig, DataConfig)
#: Lightning's options, as :meth:`sthist.models.SthistModel.train` defaults them.
TRAINER_DEFAULTS = {"accelerator": "auto", "devices": "auto", "strategy": "auto", "num_nodes": 1}


def add_parser(commands) -> None:
    """The ``fit`` subcommand: its own flags, then one per configuration field."""
    fit = commands.add_parser(
        "fit",
        help="fit a model on SpatialData zarr stores",
        description="Fit CMRCNet (or a baseline) on sections stored as SpatialData zarr stores (image, spots, "
        "table with raw counts; µm/px recorded in attrs or given). Writes config.json + model.safetensors.",
    )
    fit.add_argument("stores", nargs="+", help="training sections (.zarr)")
    fit.add_argument("--output", required=True, help="folder for the fitted model")
    fit.add_argument("--method", default="cmrcnet", choices=list(METHOD_NAMES), help="(default: cmrcnet)")
    fit.add_argument("--backbone", default=None, help=f"encoder name (default: {DEFAULT_BACKBONE})")
    fit.add_argument(
        "--genes", default=None, help="file with the gene panel, one name per line (default: HEG ∪ HVG)"
    )
    fit.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"neighbours averaged at retrieval (default: the method's chosen setting, cmrcnet "
        f"{default_k('cmrcnet')}, bleep {default_k('bleep')})",
    )
    fit.add_argument(
        "--smooth-um",
        type=float,
        default=None,
        help="smoothing radius (µm) recorded as the model's default at predict (default: the method's chosen "
        f"setting, ridge {default_smooth_um('ridge'):g}, others 0 = none)",
    )
    fit.add_argument(
        "--patch-size-um",
        type=float,
        default=PatchConfig.size_um,
        help=f"patch side in µm (default: {PatchConfig.size_um:g})",
    )
    fit.add_argument("--qc-column", default=None, help="boolean obs column selecting training spots")
    fit.add_argument(
        "--microns-per-pixel", type=float, default=None, help="µm per unit of 'global' if not recorded"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of everything random (default: 0)")
    fit.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    trainer = fit.add_argument_group("Lightning trainer")
    trainer.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: auto)")
    trainer.add_argument("--devices", default="auto", help="devices, e.g. 1, 4 or auto (default: auto)")
    trainer.add_argument("--strategy", default="auto", help="e.g. ddp (default: auto)")
    trainer.add_argument(
        "--num-nodes",
        type=int,
        default=1,
        help="nodes; under SLURM srun one task per device and node (default: 1)",
    )
    for config_class in CONFIG_CLASSES:
        add_config_flags(fit, config_class)
    fit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the stores, fit, and save the model into ``--output``."""
    import sthist

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder for the model")
    if (output / "config.json").exists() and not args.overwrite:
        raise UserError(f"{output} already holds a model; pass --overwrite or another --output")
    check_devices(args.accelerator, str(args.devices))
    genes = None
    if args.genes:
        if not Path(args.genes).is_file():
            raise UserError(f"--genes {args.genes} is not a file (one gene name per line)")
        genes = Path(args.genes).read_text().split()
    names = section_names(args.stores)
    sections = {
        name: read_store(p, args.microns_per_pixel) for name, p in zip(names, args.stores, strict=True)
    }
    model = sthist.tl.fit(
        sections,
        method=args.method,
        genes=genes,
        backbone=args.backbone,
        patch_size_um=args.patch_size_um,
        qc_column=args.qc_column,
        k=args.k,
        smooth_um=args.smooth_um,
        random_state=args.seed,
        training=config_values(args, TrainingConfig),
        architecture=config_values(args, ArchitectureConfig),
        data=config_values(args, DataConfig),
        **{name: getattr(args, name) for name in TRAINER_DEFAULTS},
    )
    if not is_rank_zero():
        return 0  # one process of a multi-device run: the first saves and reports
    model.save(args.output, overwrite=args.overwrite)
    print(f"fitted {model!r}; saved to {args.output}")
    return 0

"""``sthist predict``: predictions at the spots of stores, or over a grid of tiles, written into them."""

from __future__ import annotations

import argparse

from sthist._constants import Key
from sthist._core._config import TTA_VIEWS
from sthist.cli._common import (
    UserError,
    add_element_flags,
    element_keys,
    is_rank_zero,
    key_or_default,
    markdown,
    read_store,
)


def add_parser(commands) -> None:
    """The ``predict`` subcommand."""
    predict = commands.add_parser(
        "predict",
        help="predict expression into a SpatialData zarr store",
        description="Predict expression at the spots of a store (table.obsm[KEY], log1p units) or, with "
        "--tiles, over a grid of tiles on the tissue (new shapes + table). Existing elements are kept; "
        "results are written atomically; an existing KEY is replaced only with --overwrite.",
    )
    predict.add_argument(
        "store",
        nargs="+",
        help="section (.zarr); several stores are shared among --devices processes (one process each by default)",
    )
    predict.add_argument("--model", required=True, help="folder of a fitted model")
    predict.add_argument(
        "--key",
        default=None,
        help=f"obsm key of the spots' predictions (default: {Key.obsm.PREDICTION}) or, with --tiles, name of the "
        f"tiles (default: {Key.shapes.TILES}, where `plot --kind tiles` looks)",
    )
    predict.add_argument(
        "--tiles", action="store_true", help="dense prediction over the tissue instead of spots"
    )
    predict.add_argument(
        "--stride-um", type=float, default=None, help="tile spacing in µm (default: patch size)"
    )
    predict.add_argument(
        "--bounds",
        type=float,
        nargs=4,
        default=None,
        metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
        help="with --tiles: keep tiles whose centre lies in this rectangle (coordinate-system units)",
    )
    predict.add_argument(
        "--max-tiles",
        type=int,
        default=250_000,
        help="with --tiles: refuse grids of more tiles than this before encoding (0: no limit; default: 250000)",
    )
    predict.add_argument("--qc-column", default=None, help="boolean obs column selecting spots")
    predict.add_argument(
        "--tta-views",
        type=int,
        default=TTA_VIEWS,
        help=f"dihedral views predicted and averaged per patch (test-time augmentation; default: {TTA_VIEWS})",
    )
    predict.add_argument(
        "--smooth-um",
        type=float,
        default=None,
        help="average predictions over spots within this many µm (0: none; default: the model's setting)",
    )
    predict.add_argument(
        "--retrieval-weight",
        type=float,
        default=None,
        help="CMRCNet: share of retrieval in the prediction, the rest its decoder's (1: retrieval alone, "
        "0: the decoder alone; default: the model's setting)",
    )
    predict.add_argument(
        "--microns-per-pixel", type=float, default=None, help="µm per unit of 'global' if not recorded"
    )
    predict.add_argument(
        "--device",
        default="auto",
        help="torch device of the encoder: auto (GPU if present), cpu, cuda, cuda:1",
    )
    predict.add_argument("--overwrite", action="store_true")
    predict.add_argument(
        "--devices",
        default="1",
        help="several stores: processes (devices) to share them among, e.g. 4 GPUs, or 'auto' (default: 1)",
    )
    predict.add_argument(
        "--num-nodes",
        type=int,
        default=1,
        help="several stores: nodes (under SLURM: srun one task per device)",
    )
    predict.add_argument(
        "--strategy", default="auto", help="several stores: Lightning strategy (default: auto, i.e. ddp)"
    )
    add_element_flags(predict)
    predict.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Predict one store (spots or tiles), or share several among processes."""
    import sthist
    from sthist._core._checks import check_key_name
    from sthist.io import check_writable, update_table

    args.key = key_or_default(args.key, Key.shapes.TILES if args.tiles else Key.obsm.PREDICTION)
    check_key_name(args.key, "--key")
    if len(args.store) > 1 or args.devices != "1" or args.num_nodes > 1:
        return predict_stores(args)
    args.store = args.store[0]
    sdata = read_store(args.store, args.microns_per_pixel)
    check_writable(args.store)
    model = sthist.models.load(args.model)
    if args.tiles and args.retrieval_weight is not None:
        raise UserError("--retrieval-weight applies to spots; tiles are predicted with the model's own blend")
    # With a cache folder (STHIST_CACHE_DIR) the encoder's summaries are kept and reused across runs.
    from sthist.data import TokenCache

    cache = TokenCache() if sthist.settings.cache_dir is not None else None
    if args.tiles:
        sthist.tl.predict_tiles(
            sdata,
            model,
            token_cache=cache,
            stride_um=args.stride_um,
            key_added=args.key,
            overwrite=args.overwrite,
            bounds=args.bounds,
            max_tiles=None if args.max_tiles == 0 else args.max_tiles,
            device=args.device,
            image_key=args.image_key,
            coordinate_system=args.coordinate_system,
            microns_per_pixel=args.microns_per_pixel,
        )
        print(f"wrote shapes[{args.key!r}] and tables[{Key.tables.tiles(args.key)!r}] into {args.store}")
        return 0
    elements = element_keys(args, sdata)
    table_key = elements.table_key
    sthist.tl.predict(
        sdata,
        model,
        image_key=args.image_key,
        table_key=table_key,
        coordinate_system=elements.coordinate_system,
        microns_per_pixel=args.microns_per_pixel,
        key_added=args.key,
        overwrite=args.overwrite,
        qc_column=args.qc_column,
        tta_views=args.tta_views,
        smooth_um=args.smooth_um,
        retrieval_weight=args.retrieval_weight,
        device=args.device,
        token_cache=cache,
    )
    # Under the store's lock, the table is read again and gains the predictions; other processes' results
    # written meanwhile are kept, and the table is replaced atomically.
    update_table(
        sdata,
        table_key,
        obsm=[args.key, Key.obsm.uncertainty(args.key)],
        uns=[args.key],
        overwrite=args.overwrite,
    )
    print(f"wrote tables[{table_key!r}].obsm[{args.key!r}] into {args.store}")
    return 0


def predict_stores(args: argparse.Namespace) -> int:
    """Several stores: shared among processes by Lightning (sthist.tl.predict_stores)."""
    import sthist

    if args.tiles:
        raise UserError("--tiles predicts one store at a time; give one store, or predict spots for several")
    if args.microns_per_pixel is not None:
        raise UserError(
            "--microns-per-pixel applies to one store; record each store's scale with "
            "sthist.pp.set_microns_per_pixel, then predict them together"
        )
    devices = args.devices if args.devices == "auto" else int(args.devices)
    accelerator = "cpu" if args.device == "cpu" else ("gpu" if args.device.startswith("cuda") else "auto")
    summary = sthist.tl.predict_stores(
        args.store, args.model, key_added=args.key, overwrite=args.overwrite, accelerator=accelerator,
        devices=devices, num_nodes=args.num_nodes, strategy=args.strategy, qc_column=args.qc_column,
        tta_views=args.tta_views, smooth_um=args.smooth_um, image_key=args.image_key, table_key=args.table,
        coordinate_system=args.coordinate_system, retrieval_weight=args.retrieval_weight,
    )  # fmt: skip
    if is_rank_zero():
        print(markdown(summary.round(2).to_dict(orient="records")))
        print(f"wrote obsm[{args.key!r}] into {len(summary)} stores")
    return 0

"""``sthist plot``: predictions of a store drawn to an image file."""

from __future__ import annotations

import argparse

from sthist._constants import Key
from sthist.cli._common import UserError, check_new_file, key_or_default, read_store


def add_parser(commands) -> None:
    """The ``plot`` subcommand."""
    plot = commands.add_parser(
        "plot",
        help="plot predictions of a store to an image file",
        description="expression: observed beside predicted on the H&E (shared colour scale, Pearson r); "
        "uncertainty: prediction beside the spread of the retrieved spots; correlation: observed vs predicted "
        "gene–gene correlation; scores: per-gene Pearson r with HEG/HVG (and marker) genes highlighted; "
        "tiles: a whole-slide map from `sthist predict --tiles` (KEY = its --key, default sthist_tiles).",
    )
    plot.add_argument("store", help="section (.zarr) with predictions")
    plot.add_argument("--output", required=True, help="image file (.png, .pdf, .svg)")
    plot.add_argument(
        "--kind",
        default="expression",
        choices=["expression", "uncertainty", "correlation", "scores", "tiles"],
        help="what to plot (default: expression)",
    )
    plot.add_argument("--table", default=None, help="table of the spots, when the store holds several")
    plot.add_argument(
        "--genes",
        nargs="+",
        default=None,
        help="genes to show (expression, uncertainty, tiles; correlation: default the 30 most variable)",
    )
    plot.add_argument("--key", default=None, help="obsm key of the predictions (tiles: the shapes name)")
    plot.add_argument("--her2st-markers", action="store_true", help="highlight the HER2ST marker genes")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    plot.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Draw one kind of plot into ``--output``."""
    import matplotlib

    matplotlib.use("Agg")

    import sthist
    from sthist._core._elements import table_holding

    check_new_file(args.output, args.overwrite)
    sdata = read_store(args.store, None)
    args.key = key_or_default(args.key, Key.shapes.TILES if args.kind == "tiles" else Key.obsm.PREDICTION)
    if args.kind in ("expression", "uncertainty", "tiles") and not args.genes:
        raise UserError(f"--genes is required for --kind {args.kind}")
    if args.kind == "tiles":
        sthist.pl.tiles(sdata, args.genes, key=args.key, save=args.output)
        print(f"wrote {args.output}")
        return 0
    try:
        args.table = table_holding(sdata, args.table, obsm_key=args.key)
    except ValueError:
        raise UserError(
            f"the store holds several tables {sorted(sdata.tables)} with predictions under {args.key!r}; "
            "choose one with --table"
        ) from None
    table = sdata.tables[args.table]
    if args.kind in ("expression", "correlation", "scores") and Key.layers.NORMALIZED not in table.layers:
        sthist.pp.normalize(table)
    if args.kind == "expression":
        sthist.pl.expression(sdata, args.genes, key=args.key, save=args.output, table_key=args.table)
    elif args.kind == "uncertainty":
        sthist.pl.uncertainty(sdata, args.genes, key=args.key, save=args.output, table_key=args.table)
    elif args.kind == "correlation":
        sthist.pl.gene_correlation(
            sdata, genes=args.genes, key=args.key, save=args.output, table_key=args.table
        )
    else:
        markers = sthist.datasets.her2st_marker_genes if args.her2st_markers else None
        result = sthist.tl.evaluate(table, key=args.key, marker_genes=markers, inplace=False)
        sthist.pl.gene_scores(result, save=args.output)
    print(f"wrote {args.output}")
    return 0

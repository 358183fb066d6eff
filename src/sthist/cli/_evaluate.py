"""``sthist evaluate``: compare the predictions in a store with its measured expression."""

from __future__ import annotations

import argparse

from sthist._constants import Key
from sthist.cli._common import add_element_flags, check_new_file, read_store


def add_parser(commands) -> None:
    """The ``evaluate`` subcommand."""
    evaluate = commands.add_parser(
        "evaluate",
        help="compare predictions with measured expression",
        description="Pearson/Spearman/MSE per gene and over HEG@n, HVG@n, markers and all genes, plus gene–gene "
        "correlation fidelity, for predictions stored in a zarr store.",
    )
    evaluate.add_argument("store", help="section (.zarr) with predictions and measured counts")
    evaluate.add_argument("--key", default=Key.obsm.PREDICTION)
    evaluate.add_argument(
        "--layer", default=Key.layers.NORMALIZED, help="observed log1p layer (computed if absent)"
    )
    evaluate.add_argument("--n-top", type=int, default=50)
    evaluate.add_argument(
        "--her2st-markers", action="store_true", help="summarise the HER2ST marker genes (MG)"
    )
    evaluate.add_argument("--output", default=None, help="CSV file for the per-gene scores")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_element_flags(evaluate, image=False)
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary table; per-gene scores to a CSV when asked."""
    import sthist
    from sthist._core._elements import resolve_elements
    from sthist._core._report import markdown_table

    if args.output:
        check_new_file(args.output, args.overwrite)
    sdata = read_store(args.store, None)
    table = sdata.tables[
        resolve_elements(
            sdata, table_key=args.table, coordinate_system=args.coordinate_system, require_image=False
        ).table_key
    ]
    if args.layer not in table.layers:
        sthist.pp.normalize(table, key_added=args.layer)
    markers = sthist.datasets.her2st_marker_genes if args.her2st_markers else None
    result = sthist.tl.evaluate(
        table, key=args.key, layer=args.layer, n_top=args.n_top, marker_genes=markers, inplace=False
    )
    print(markdown_table(result["summary"]))
    print(f"gene–gene correlation fidelity: {result['gene_gene_fidelity']:.3f} over {result['spots']} spots")
    if args.output:
        result["genes"].to_csv(args.output, index_label="gene")
        print(f"wrote per-gene scores to {args.output}")
    return 0

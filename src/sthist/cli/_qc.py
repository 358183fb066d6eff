"""``sthist qc``: flag spots off tissue or too close to the image border."""

from __future__ import annotations

import argparse
from pathlib import Path

from sthist._constants import Key
from sthist._core._config import PatchConfig
from sthist.cli._common import UserError, add_element_flags, element_keys, read_store


def add_parser(commands) -> None:
    """The ``qc`` subcommand."""
    qc = commands.add_parser(
        "qc",
        help="flag spots off tissue or too close to the image border",
        description=f"Write obs columns {Key.obs.QC_IN_IMAGE}, {Key.obs.QC_TISSUE_FRACTION}, {Key.obs.QC_ON_TISSUE} "
        f"and {Key.obs.QC_PASS} into the store's table (use --qc-column {Key.obs.QC_PASS} with fit and predict).",
    )
    qc.add_argument("store", help="section (.zarr)")
    qc.add_argument(
        "--patch-size-um",
        type=float,
        default=PatchConfig.size_um,
        help=f"patch side in µm; a spot passes when its patch lies inside the image (default: {PatchConfig.size_um:g})",
    )
    qc.add_argument(
        "--min-tissue-fraction",
        type=float,
        default=0.5,
        help="fraction of the spot covered by tissue to count as on tissue (default: 0.5)",
    )
    qc.add_argument(
        "--microns-per-pixel", type=float, default=None, help="µm per unit of 'global' if not recorded"
    )
    qc.add_argument("--overwrite", action="store_true", help="replace QC columns already in the table")
    qc.add_argument("--plot", default=None, help="also draw the tissue mask and the spots' QC into this PNG")
    add_element_flags(qc)
    qc.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the QC columns into the store's table (and a plot when asked)."""
    import sthist
    from sthist.io import check_writable, update_table

    sdata = read_store(args.store, args.microns_per_pixel)
    check_writable(args.store)
    if args.plot is not None and (Path(args.plot).is_dir() or not Path(args.plot).parent.is_dir()):
        raise UserError(f"--plot {args.plot}: give a file name in a folder that exists")
    elements = element_keys(args, sdata)
    table_key = elements.table_key
    table = sdata.tables[table_key]
    columns = [Key.obs.QC_IN_IMAGE, Key.obs.QC_TISSUE_FRACTION, Key.obs.QC_ON_TISSUE, Key.obs.QC_PASS]
    sthist.pp.qc_spots(
        sdata,
        image_key=args.image_key,
        table_key=table_key,
        coordinate_system=elements.coordinate_system,
        microns_per_pixel=args.microns_per_pixel,
        patch_size_um=args.patch_size_um,
        min_tissue_fraction=args.min_tissue_fraction,
        overwrite=args.overwrite,
    )
    update_table(sdata, table_key, obs=columns, uns=[Key.uns.QC], overwrite=args.overwrite)
    passed = int(table.obs[Key.obs.QC_PASS].sum())
    print(
        f"{passed} of {table.n_obs} spots pass QC (patch inside the image, on tissue); wrote "
        f"tables[{table_key!r}].obs[{Key.obs.QC_PASS!r}] into {args.store} (use --qc-column {Key.obs.QC_PASS})"
    )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        sthist.pl.qc(
            sdata, image_key=args.image_key, table_key=table_key, coordinate_system=elements.coordinate_system,
            save=args.plot, show=False,
        )  # fmt: skip
        print(f"wrote {args.plot}")
    return 0

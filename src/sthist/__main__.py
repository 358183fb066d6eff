"""Command line: ``sthist demo`` (and, as they land, fit / predict / evaluate)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import sthist
    from sthist.data import SpotPatchDataset

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sections = sthist.datasets.her2st(args.sections)
    loaded = time.perf_counter()
    rows = []
    for name, sdata in sections.items():
        table = sdata.tables["table"]
        sthist.pp.normalize(table)
        sthist.pp.qc_spots(sdata, patch_size_um=args.patch_size_um)
        geometry = sthist.pp.patch_geometry(sdata, patch_size_um=args.patch_size_um)
        rows.append(
            {
                "section": name,
                "spots": int(table.n_obs),
                "pass_qc": int(table.obs["sthist_pass_qc"].sum()),
                "microns_per_pixel": round(sthist.pp.get_microns_per_pixel(sdata), 4),
                "level": geometry.level.index,
                "level_microns_per_pixel": round(geometry.level_microns_per_pixel[0], 3),
                "spots_on_tissue": round(
                    sdata.attrs["sthist"].get("fraction_spots_on_tissue", float("nan")), 3
                ),
            }
        )
    panel = sthist.pp.select_genes(sections, flavor="heg", n_top=args.n_genes)
    dataset = SpotPatchDataset(
        sections, genes=panel, patch_size_um=args.patch_size_um, qc_column="sthist_pass_qc"
    )
    tick = time.perf_counter()
    patches = np.stack([dataset.patch(i) for i in range(len(dataset))])
    extraction = time.perf_counter() - tick

    header = [
        "section",
        "spots",
        "pass_qc",
        "microns_per_pixel",
        "level",
        "level_microns_per_pixel",
        "spots_on_tissue",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    print(
        f"\n{len(sections)} sections, {sum(r['spots'] for r in rows)} spots ({len(dataset)} pass QC), "
        f"panel of {len(panel)} HEG genes (ERBB2 {'in' if 'ERBB2' in panel else 'not in'} panel); "
        f"loading {loaded - start:.1f} s; {len(dataset)} patches of {args.patch_size_um:g} µm → "
        f"{dataset.patch_size_px} px in {extraction:.1f} s ({len(dataset) / extraction:.0f} patches/s); "
        f"patch tensor {patches.nbytes / 2**20:.0f} MiB."
    )
    summary = {
        "sections": rows,
        "gene_panel": panel,
        "patches": len(dataset),
        "patches_per_second": len(dataset) / extraction,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {output / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sthist",
        description="Predict spatially resolved gene expression from H&E histology. Lengths are in µm, "
        "images in pixels; expression in log1p of counts per 10,000.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the main job on the real HER2ST data",
        description="Load the image-bearing HER2ST sections (from STHIST_DATA_DIR), normalise, QC spots, "
        "choose a gene panel and extract every spot patch; print a summary table.",
    )
    demo.add_argument("--output", default="output/demo", help="folder for results (default: output/demo)")
    demo.add_argument(
        "--sections", nargs="+", default=None, help="HER2ST sections (default: the 8 with images)"
    )
    demo.add_argument("--patch-size-um", type=float, default=112.0, help="patch side in µm (default: 112)")
    demo.add_argument("--n-genes", type=int, default=250, help="size of the HEG gene panel (default: 250)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``sthist demo`` (and, as they land, fit / predict / evaluate)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import warnings

    import numpy as np

    import sthist
    from sthist.tl._metrics import gene_pearson, top_genes

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    names = [s for s in ("A1", "B4", "C2", "C3", "C4", "C5", "C6")]  # A2 left out: image misregistered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sections = sthist.datasets.her2st(names)
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
                "level_microns_per_pixel": round(geometry.level_microns_per_pixel[0], 3),
                "spots_on_tissue": round(sdata.attrs["sthist"]["fraction_spots_on_tissue"], 3),
            }
        )
    print(_markdown(rows))
    print(
        f"loaded and checked {len(sections)} sections in {time.perf_counter() - start:.0f} s (A2 left out: misregistered)"
    )

    test = args.test_section
    if test not in sections:
        raise SystemExit(f"--test-section must be one of {list(sections)}")
    train = {name: sdata for name, sdata in sections.items() if name != test}
    results, models = [], {}
    for method in ["cmrcnet", *(["ridge"] if args.baseline else [])]:
        tick = time.perf_counter()
        model = sthist.tl.fit(
            train,
            method=method,
            max_epochs=args.epochs,
            views=args.views,
            learning_rate=1e-3,
            patch_size_um=args.patch_size_um,
            qc_column="sthist_pass_qc",
            random_state=0,
        )
        fitted = time.perf_counter() - tick
        key = f"sthist_pred_{method}"
        sthist.tl.predict(sections[test], model, key_added=key, overwrite=True)
        table = sections[test].tables["table"]
        observed = table[:, model.genes].to_df(layer="sthist_log1p")
        r = gene_pearson(observed, table.obsm[key][model.genes])
        results.append(
            {
                "method": method,
                "HEG@50": round(float(r[top_genes(observed, 50, "heg")].mean()), 3),
                "HVG@50": round(float(r[top_genes(observed, 50, "hvg")].mean()), 3),
                "ERBB2 r": round(float(r.get("ERBB2", np.nan)), 3),
                "fit (s)": round(fitted),
                "total (s)": round(time.perf_counter() - tick),
            }
        )
        models[method] = model
    print(
        f"\ntrained on {list(train)} ({sum(models['cmrcnet'].config['training_sections'].values())} spots), "
        f"predicted {test} ({sections[test].tables['table'].n_obs} spots); panel of {len(models['cmrcnet'].genes)} genes; "
        "mean Pearson r across spots of the test section:"
    )
    print(_markdown(results))
    models["cmrcnet"].save(output / "model", overwrite=True)
    table = sections[test].tables["table"]
    observed = table[:, models["cmrcnet"].genes].to_df(layer="sthist_log1p")
    genes = ["ERBB2", *[g for g in top_genes(observed, 10, "hvg") if g != "ERBB2"][:3]]
    figure = sthist.pl.expression(
        sections[test],
        genes,
        key="sthist_pred_cmrcnet",
        title=f"HER2ST {test}: observed vs CMRCNet-predicted",
    )
    figure.savefig(output / "expression.png", dpi=90)
    summary = {"sections": rows, "test_section": test, "results": results, "figure_genes": genes}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nwrote {output / 'expression.png'}, {output / 'model'} and {output / 'summary.json'} "
        f"({time.perf_counter() - start:.0f} s in all)"
    )
    return 0


def _markdown(rows: list[dict]) -> str:
    from sthist._core._report import markdown_table

    return markdown_table(rows)


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
        description="Load the image-bearing HER2ST sections (from STHIST_DATA_DIR; A2 left out as misregistered), "
        "normalise, QC spots, fit CMRCNet (frozen EfficientNet-Lite0, cached tokens) on all but one section, "
        "predict the held-out section, print HEG@50/HVG@50 mean Pearson r (with the ridge baseline) and plot "
        "observed vs predicted expression on tissue.",
    )
    demo.add_argument("--output", default="output/demo", help="folder for results (default: output/demo)")
    demo.add_argument("--test-section", default="C6", help="held-out HER2ST section (default: C6)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    demo.add_argument("--views", type=int, default=4, help="dihedral views encoded per patch (default: 4)")
    demo.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the ridge baseline")
    demo.add_argument("--patch-size-um", type=float, default=112.0, help="patch side in µm (default: 112)")
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

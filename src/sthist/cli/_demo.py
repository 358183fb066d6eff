"""``sthist demo``: the main job on the real HER2ST data."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sthist._constants import Key
from sthist._core._config import PatchConfig, TrainingConfig
from sthist.cli._common import UserError, markdown


def add_parser(commands) -> None:
    """The ``demo`` subcommand."""
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
    training = TrainingConfig()
    demo.add_argument(
        "--epochs",
        type=int,
        default=training.max_epochs,
        help=f"training epochs (default: tl.fit's, {training.max_epochs})",
    )
    demo.add_argument(
        "--views",
        type=int,
        default=training.views,
        help=f"dihedral views encoded per patch (default: {training.views})",
    )
    demo.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the ridge baseline")
    demo.add_argument(
        "--patch-size-um",
        type=float,
        default=PatchConfig.size_um,
        help=f"patch side in µm (default: {PatchConfig.size_um:g})",
    )
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load HER2ST, fit CMRCNet (and the ridge baseline) on all but one section, predict and score it."""
    import warnings

    import numpy as np

    import sthist
    from sthist._core._metrics import gene_pearson, top_genes

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
                "pass_qc": int(table.obs[Key.obs.QC_PASS].sum()),
                "microns_per_pixel": round(sthist.pp.get_microns_per_pixel(sdata), 4),
                "level_microns_per_pixel": round(geometry.level_microns_per_pixel[0], 3),
                "spots_on_tissue": round(sdata.attrs[Key.attrs.ROOT][Key.attrs.REGISTRATION], 3),
            }
        )
    print(markdown(rows))
    print(
        f"loaded and checked {len(sections)} sections in {time.perf_counter() - start:.0f} s (A2 left out: misregistered)"
    )

    test = args.test_section
    if test not in sections:
        raise UserError(f"--test-section must be one of {list(sections)}")
    train = {name: sdata for name, sdata in sections.items() if name != test}
    results, models = [], {}
    for method in ["cmrcnet", *(["ridge"] if args.baseline else [])]:
        tick = time.perf_counter()
        model = sthist.tl.fit(
            train,
            method=method,
            max_epochs=args.epochs,
            training={"views": args.views},
            patch_size_um=args.patch_size_um,
            qc_column=Key.obs.QC_PASS,
            random_state=0,
        )
        fitted = time.perf_counter() - tick
        key = Key.prediction(method)
        sthist.tl.predict(sections[test], model, key_added=key, overwrite=True)
        table = sections[test].tables["table"]
        observed = table[:, model.genes].to_df(layer=Key.layers.NORMALIZED)
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
        f"\ntrained on {list(train)} ({sum(models['cmrcnet'].config.training_sections.values())} spots), "
        f"predicted {test} ({sections[test].tables['table'].n_obs} spots); panel of {len(models['cmrcnet'].genes)} genes; "
        "mean Pearson r across spots of the test section:"
    )
    print(markdown(results))
    models["cmrcnet"].save(output / "model", overwrite=True)
    table = sections[test].tables["table"]
    observed = table[:, models["cmrcnet"].genes].to_df(layer=Key.layers.NORMALIZED)
    genes = ["ERBB2", *[g for g in top_genes(observed, 10, "hvg") if g != "ERBB2"][:3]]
    figure = sthist.pl.expression(
        sections[test],
        genes,
        key=Key.prediction("cmrcnet"),
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

"""Command line: ``sthist demo``, ``fit``, ``predict``, ``evaluate`` and ``plot`` on SpatialData zarr stores."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from sthist._constants import Key
from sthist._core._config import (
    DEFAULT_BACKBONE,
    METHOD_NAMES,
    N_TOP_GENES,
    TTA_VIEWS,
    ArchitectureConfig,
    PatchConfig,
    TrainingConfig,
    default_k,
    default_smooth_um,
)


def _demo(args: argparse.Namespace) -> int:
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
    print(_markdown(rows))
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
            views=args.views,
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
        f"\ntrained on {list(train)} ({sum(models['cmrcnet'].config['training_sections'].values())} spots), "
        f"predicted {test} ({sections[test].tables['table'].n_obs} spots); panel of {len(models['cmrcnet'].genes)} genes; "
        "mean Pearson r across spots of the test section:"
    )
    print(_markdown(results))
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


def _markdown(rows: list[dict]) -> str:
    from sthist._core._report import markdown_table

    return markdown_table(rows)


def _read_store(path: str, microns_per_pixel: float | None, *, flag: str = "STORE"):
    import spatialdata as sd

    import sthist
    from sthist._constants import DEFAULT_COORDINATE_SYSTEM
    from sthist._core._scale import checked_scale

    store = Path(path)
    if not store.exists():
        raise UserError(f"{store} does not exist (expected a SpatialData zarr store)")
    if not store.is_dir():
        raise UserError(f"{store} is a file, not a SpatialData zarr store (a folder ending in .zarr)")
    if not any((store / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs")):
        raise UserError(
            f"{store} is not a zarr store (no zarr.json or .zgroup inside); give the SpatialData store"
        )
    try:
        sdata = sd.read_zarr(store)
    except Exception as error:  # spatialdata's many ways of failing on foreign folders
        raise UserError(
            f"{store} could not be read as a SpatialData store ({type(error).__name__}: {error})"
        ) from error
    if microns_per_pixel is not None:
        given = checked_scale(microns_per_pixel, "--microns-per-pixel")
        recorded = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.MICRONS_PER_PIXEL, {})
        if isinstance(recorded, dict) and DEFAULT_COORDINATE_SYSTEM in recorded:
            stored = float(recorded[DEFAULT_COORDINATE_SYSTEM])
            if abs(given / stored - 1) > 0.01:
                ratio = max(given / stored, stored / given)
                raise UserError(
                    f"--microns-per-pixel {given:g} differs from the {stored:g} µm/px recorded in {store} "
                    f"({ratio:.3g}× apart); drop the flag to use the recorded scale, or correct the store with "
                    "sthist.pp.set_microns_per_pixel"
                )
        sthist.pp.set_microns_per_pixel(sdata, given, source="given on the command line")
    return sdata


def _section_names(paths: list[str]) -> list[str]:
    """Names of training stores: their file names, with as many parent folders as needed to tell them apart."""
    resolved = [Path(p).resolve() for p in paths]
    repeated = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise UserError(f"{repeated[0]} is given more than once; give each training store once")
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        names = ["/".join([*p.parent.parts[len(p.parent.parts) - depth + 1 :], p.stem]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in resolved]


def _is_rank_zero() -> bool:
    """Whether this process is the first (or only) of a multi-process Lightning run."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _check_devices(accelerator: str, devices: str) -> None:
    import os

    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--accelerator {accelerator} asks for a GPU, but torch sees none here; use --accelerator cpu"
        )
    if devices == "auto" or not devices.lstrip("-").isdigit():
        return
    count = int(devices)
    if count < 1 and count != -1:
        raise UserError(f"--devices must be a positive number of devices, -1 (all) or auto; got {devices}")
    available = (os.cpu_count() or 1) if on_cpu else torch.cuda.device_count()
    if count > available:
        what = "CPU cores" if on_cpu else "GPUs"
        raise UserError(
            f"--devices {count} asks for more than the {available} {what} here; use --devices {available} or fewer"
            + (" (or --accelerator gpu on a GPU machine)" if on_cpu else "")
        )


def _fit(args: argparse.Namespace) -> int:
    import sthist

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder for the model")
    if (output / "config.json").exists() and not args.overwrite:
        raise UserError(f"{output} already holds a model; pass --overwrite or another --output")
    _check_devices(args.accelerator, str(args.devices))
    genes = None
    if args.genes:
        if not Path(args.genes).is_file():
            raise UserError(f"--genes {args.genes} is not a file (one gene name per line)")
        genes = Path(args.genes).read_text().split()
    names = _section_names(args.stores)
    sections = {
        name: _read_store(p, args.microns_per_pixel) for name, p in zip(names, args.stores, strict=True)
    }
    model = sthist.tl.fit(
        sections,
        genes=genes,
        method=args.method,
        backbone=args.backbone,
        n_top_genes=args.n_top_genes,
        exclude_technical=args.exclude_technical,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        k=args.k,
        smooth_um=args.smooth_um,
        views=args.views,
        hed_jitter=args.hed_jitter,
        fine_tune=args.fine_tune,
        token_layers=args.token_layers,
        reconstruction_grid=args.reconstruction_grid,
        context_um=args.context_um,
        ridge_alpha=args.ridge_alpha,
        detach_target=args.detach_target,
        center_expression=args.center_expression,
        center_tokens=args.center_tokens,
        stain_normalization=args.stain_normalization,
        patch_size_um=args.patch_size_um,
        qc_column=args.qc_column,
        random_state=args.seed,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
    )
    if not _is_rank_zero():
        return 0  # one process of a multi-device run: the first saves and reports
    model.save(args.output, overwrite=args.overwrite)
    print(f"fitted {model!r}; saved to {args.output}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import sthist
    from sthist._core._checks import check_key_name
    from sthist.io import check_writable, update_table

    args.key = args.key or (Key.shapes.TILES if args.tiles else Key.obsm.PREDICTION)
    check_key_name(args.key, "--key")
    if len(args.store) > 1 or args.devices != "1" or args.num_nodes > 1:
        return _predict_stores(args)
    args.store = args.store[0]
    sdata = _read_store(args.store, args.microns_per_pixel)
    check_writable(args.store)
    model = sthist.models.load(args.model)
    if args.tiles:
        sthist.tl.predict_tiles(
            sdata,
            model,
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
    elements = _elements(args, sdata)
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
        device=args.device,
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


def _predict_stores(args: argparse.Namespace) -> int:
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
        coordinate_system=args.coordinate_system,
    )  # fmt: skip
    if _is_rank_zero():
        print(_markdown(summary.round(2).to_dict(orient="records")))
        print(f"wrote obsm[{args.key!r}] into {len(summary)} stores")
    return 0


def _elements(args: argparse.Namespace, sdata):
    """The image, spots and table a command works on, from --image-key, --table and --coordinate-system."""
    from sthist._core._elements import resolve_elements

    return resolve_elements(
        sdata, image_key=args.image_key, table_key=args.table, coordinate_system=args.coordinate_system
    )


def _add_element_flags(command: argparse.ArgumentParser, *, image: bool = True) -> None:
    from sthist._constants import DEFAULT_COORDINATE_SYSTEM

    if image:
        command.add_argument(
            "--image-key", default=None, help="H&E image element, when the store holds several"
        )
    command.add_argument("--table", default=None, help="table of the spots, when the store holds several")
    command.add_argument(
        "--coordinate-system",
        default=DEFAULT_COORDINATE_SYSTEM,
        help=f"coordinate system of image and spots (default: {DEFAULT_COORDINATE_SYSTEM}, else the one they share)",
    )


def _qc(args: argparse.Namespace) -> int:
    import sthist
    from sthist.io import check_writable, update_table

    sdata = _read_store(args.store, args.microns_per_pixel)
    check_writable(args.store)
    if args.plot is not None and (Path(args.plot).is_dir() or not Path(args.plot).parent.is_dir()):
        raise UserError(f"--plot {args.plot}: give a file name in a folder that exists")
    elements = _elements(args, sdata)
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


def _evaluate(args: argparse.Namespace) -> int:
    import sthist
    from sthist._core._elements import resolve_elements
    from sthist._core._report import markdown_table

    if args.output:
        _check_new_file(args.output, args.overwrite)
    sdata = _read_store(args.store, None)
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


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")

    import sthist
    from sthist._core._elements import table_holding

    _check_new_file(args.output, args.overwrite)
    sdata = _read_store(args.store, None)
    args.key = args.key or (Key.shapes.TILES if args.kind == "tiles" else Key.obsm.PREDICTION)
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


def _check_new_file(path: str, overwrite: bool) -> None:
    if Path(path).is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite or choose another file")
    if not Path(path).parent.is_dir():
        raise UserError(f"--output {path}: the folder {Path(path).parent} does not exist")


def _ridge_alpha(value: str) -> float | str:
    """``cv``, ``hest`` or a number (``--ridge-alpha``)."""
    if value in ("cv", "hest"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cv, hest or a number, got {value!r}") from None


def _n_top_genes(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of genes or 'all', got {value!r}") from None


def _version() -> str:
    from importlib.metadata import version

    return version("sthist")


def build_parser() -> argparse.ArgumentParser:
    """The ``sthist`` argument parser with its subcommands."""
    training = TrainingConfig()
    parser = argparse.ArgumentParser(
        prog="sthist",
        description="Predict spatially resolved gene expression from H&E histology. Lengths are in µm, "
        "images in pixels; expression in log1p of counts per 10,000.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of one line"
    )
    parser.add_argument("--version", action="version", version=f"sthist {_version()}")
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
    demo.set_defaults(run=_demo)

    fit = commands.add_parser(
        "fit",
        help="fit a model on SpatialData zarr stores",
        description="Fit CMRCNet (or a baseline) on sections stored as SpatialData zarr stores (image, spots, "
        "table with raw counts; µm/px recorded in attrs or given). Writes config.json + model.safetensors.",
    )
    fit.add_argument("stores", nargs="+", help="training sections (.zarr)")
    fit.add_argument("--output", required=True, help="folder for the fitted model")
    fit.add_argument("--method", default="cmrcnet", choices=list(METHOD_NAMES))
    fit.add_argument("--backbone", default=None, help=f"encoder name (default: {DEFAULT_BACKBONE})")
    fit.add_argument(
        "--genes", default=None, help="file with the gene panel, one name per line (default: HEG ∪ HVG)"
    )
    fit.add_argument(
        "--n-top-genes",
        type=_n_top_genes,
        default=N_TOP_GENES,
        help=f"size of the HEG and HVG sets of the panel, or 'all' for every detected gene (default: {N_TOP_GENES})",
    )
    fit.add_argument(
        "--epochs",
        type=int,
        default=training.max_epochs,
        help=f"training epochs (default: {training.max_epochs})",
    )
    fit.add_argument(
        "--batch-size",
        type=int,
        default=training.batch_size,
        help=f"spots per batch (default: {training.batch_size})",
    )
    fit.add_argument(
        "--learning-rate",
        type=float,
        default=training.learning_rate,
        help=f"AdamW learning rate (default: {training.learning_rate:g})",
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
        "--views",
        type=int,
        default=training.views,
        help=f"dihedral views encoded per patch, frozen encoder (default: {training.views})",
    )
    fit.add_argument(
        "--hed-jitter",
        type=float,
        default=training.hed_jitter,
        help="stain augmentation strength σ: H, E and DAB concentrations scaled by U(1-σ, 1+σ) and shifted by "
        f"U(-σ, σ) in views 1 and up (0 = off; 0.05 is light; default: {training.hed_jitter:g})",
    )
    fit.add_argument(
        "--fine-tune",
        action="store_true",
        help="train the image encoder too (slow without a GPU; default: frozen encoder, cached tokens)",
    )
    fit.add_argument(
        "--patch-size-um",
        type=float,
        default=PatchConfig.size_um,
        help=f"patch side in µm (default: {PatchConfig.size_um:g})",
    )
    fit.add_argument("--qc-column", default=None, help="boolean obs column selecting training spots")
    architecture = ArchitectureConfig()
    fit.add_argument(
        "--token-layers",
        type=int,
        default=architecture.token_layers,
        help=f"trainable transformer layers over the token grid (default: {architecture.token_layers})",
    )
    fit.add_argument(
        "--context-um",
        type=float,
        default=architecture.context_um,
        help="add the mean token of the spots within this many µm as spatial context (default: none)",
    )
    fit.add_argument(
        "--ridge-alpha",
        type=_ridge_alpha,
        default=architecture.ridge_alpha,
        help="ridge baseline's strength: cv, hest or a number (default: cv)",
    )
    fit.add_argument(
        "--reconstruction-grid",
        type=int,
        default=architecture.reconstruction_grid,
        help="side of the regional token grid of the reconstruction branch, 0 for every token "
        f"(default: {architecture.reconstruction_grid})",
    )
    fit.add_argument(
        "--detach-target", action="store_true", help="reconstruct a detached copy of the image embedding"
    )
    fit.add_argument(
        "--center-expression",
        action="store_true",
        help="shift each training section's expression to the training mean (targets and retrieval bank)",
    )
    fit.add_argument(
        "--center-tokens",
        action="store_true",
        help="replace each section's mean encoder channel vector by the training mean (frozen encoder)",
    )
    fit.add_argument(
        "--exclude-technical",
        action="store_true",
        help="leave mitochondrial, ribosomal-protein and MALAT1/NEAT1 genes out of the panel",
    )
    fit.add_argument(
        "--stain-normalization",
        action="store_true",
        help="map each section's colours onto the training average before encoding (Reinhard)",
    )
    fit.add_argument(
        "--microns-per-pixel", type=float, default=None, help="µm per unit of 'global' if not recorded"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    fit.add_argument("--devices", default="auto", help="Lightning devices (e.g. 1, 4, auto)")
    fit.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp; default: auto)")
    fit.add_argument(
        "--num-nodes", type=int, default=1, help="nodes (under SLURM: srun one task per device and node)"
    )
    fit.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    fit.set_defaults(run=_fit)

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
    _add_element_flags(predict)
    predict.set_defaults(run=_predict)

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
    _add_element_flags(qc)
    qc.set_defaults(run=_qc)

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
    _add_element_flags(evaluate, image=False)
    evaluate.set_defaults(run=_evaluate)

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
    plot.set_defaults(run=_plot)
    return parser


class UserError(Exception):
    """A mistake in the command line or its input, reported as one line."""


#: Python keywords in sthist's messages and the command-line flags that set them.
_FLAGS = {
    "key_added": "--key",
    "qc_column": "--qc-column",
    "batch_size": "--batch-size",
    "microns_per_pixel": "--microns-per-pixel",
    "stride_um": "--stride-um",
    "n_top_genes": "--n-top-genes",
    "exclude_technical": "--exclude-technical",
    "n_top": "--n-top",
    "learning_rate": "--learning-rate",
    "max_epochs": "--epochs",
    "patch_size_um": "--patch-size-um",
    "tta_views": "--tta-views",
    "smooth_um": "--smooth-um",
    "max_tiles": "--max-tiles",
    "table_key": "--table",
    "token_layers": "--token-layers",
    "reconstruction_grid": "--reconstruction-grid",
    "context_um": "--context-um",
    "ridge_alpha": "--ridge-alpha",
    "random_state": "--seed",
    "bounds": "--bounds",
}


def cli_message(message: str) -> str:
    """``message`` with Python keywords replaced by the flags that set them (``overwrite=True`` → ``--overwrite``)."""
    import re

    message = re.sub(r"`?\boverwrite=True`?", "--overwrite", message)
    for keyword, flag in _FLAGS.items():
        message = re.sub(rf"(?<!['\w])`?\b{keyword}\b(=(?=[\s`.,;)]|$))?`?(?!')", flag, message)
    for keyword, flag in (("k", "--k"), ("views", "--views"), ("genes", "--genes")):
        message = re.sub(rf"(?<![\w.\[]){keyword}=", f"{flag} ", message)
        message = re.sub(rf"^{keyword} (must|is|exceeds)\b", rf"{flag} \1", message)
    message = message.replace(
        "run `sthist.tl.predict_tiles(sdata, model)` first", "run `sthist predict --tiles` first"
    )
    message = message.replace("(or pass its --key as key=)", "(with the same --key)")
    message = message.replace("run `sthist.tl.predict(sdata, model)` first", "run `sthist predict` first")
    return " ".join(message.split())


#: Errors that report a mistake in the input (one line); anything else is a fault (one line and --debug).
_USER_ERRORS = (
    UserError,
    ValueError,
    KeyError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    TimeoutError,
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` by default); returns the exit status.

    A mistake in the input prints one line, ``sthist <command>: error: …`` naming the flag to change, and
    returns 2; an unexpected failure prints one line and returns 1. ``--debug`` shows the traceback instead.
    """
    import warnings

    args = build_parser().parse_args(argv)
    # -v shows sthist's progress; other libraries stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("sthist").setLevel(logging.INFO if args.verbose else logging.WARNING)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning if not args.verbose else _show_every_warning
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"sthist {args.command}: interrupted; the store and the model folder are as they were",
            file=sys.stderr,
        )
        return 130
    except _USER_ERRORS as error:
        if args.debug:
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"sthist {args.command}: error: {cli_message(str(text))}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(
            f"sthist {args.command}: failed: {type(error).__name__}: {' '.join(str(error).split())[:500]} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = shown


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print sthist's warnings as one line each on stderr (``sthist: warning: …``).

    Other libraries' notices (zarr, spatialdata, on every write) are shown only with ``--verbose``.
    """
    from pathlib import Path

    import sthist

    if str(filename).startswith(str(Path(sthist.__file__).parent)):
        print(f"sthist: warning: {cli_message(str(message))}", file=sys.stderr)


def _show_every_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning, one line each, with the library it came from."""
    print(f"warning ({Path(filename).name}): {' '.join(str(message).split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

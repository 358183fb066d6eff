"""What the subcommands share: reading stores, naming sections, device checks, element flags, one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from sthist._constants import Key


class UserError(Exception):
    """A mistake in the command line or its input, reported as one line."""


def markdown(rows: list[dict]) -> str:
    from sthist._core._report import markdown_table

    return markdown_table(rows)


def read_store(path: str, microns_per_pixel: float | None, *, flag: str = "STORE"):
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


def section_names(paths: list[str]) -> list[str]:
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


def is_rank_zero() -> bool:
    """Whether this process is the first (or only) of a multi-process Lightning run."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def check_devices(accelerator: str, devices: str) -> None:
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


def element_keys(args: argparse.Namespace, sdata):
    """The image, spots and table a command works on, from --image-key, --table and --coordinate-system."""
    from sthist._core._elements import resolve_elements

    return resolve_elements(
        sdata, image_key=args.image_key, table_key=args.table, coordinate_system=args.coordinate_system
    )


def add_element_flags(command: argparse.ArgumentParser, *, image: bool = True) -> None:
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


def check_new_file(path: str, overwrite: bool) -> None:
    if Path(path).is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite or choose another file")
    if not Path(path).parent.is_dir():
        raise UserError(f"--output {path}: the folder {Path(path).parent} does not exist")


def key_or_default(key: str | None, default: str) -> str:
    """``--key`` as given, ``default`` when left out; an empty key (an unset variable) is refused."""
    if key is not None and not key.strip():
        raise UserError(
            f"--key is empty (an unset variable?); give the name to use, or leave --key out for {default}"
        )
    return key or default

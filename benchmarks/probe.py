"""Bad-input and fault probe: each case is run and classed by what the user sees.

Classes: ``clear`` (an error raised by sthist itself, or a CLI exit ≠ 0 with one line on stderr),
``warned`` (a UserWarning where a warning is the documented answer), ``library`` (an exception raised
inside another package: the user sees its traceback), ``silent`` (no error and no warning), ``hang``
(longer than the time limit). Run: ``python benchmarks/probe.py`` (about 2 minutes on 2 cores); it writes
``benchmarks/results/probe.md``.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import sthist
from sthist._core._report import markdown_table
from sthist.tl._fit import merge_fit_options

LIMIT_S = 60
PACKAGE = str(Path(sthist.__file__).parent)
FAST = {"backbone": "tiny", "max_epochs": 1, "batch_size": 16, "k": 5, "training": {"views": 1}}


def _fit(sections, **options):
    """``tl.fit`` with :data:`FAST` under ``options`` (configuration dicts merged field by field)."""
    return sthist.tl.fit(sections, **merge_fit_options(FAST, options))


def copy_of(sdata):
    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={k: v.copy() for k, v in sdata.tables.items()},
        attrs=copy.deepcopy(sdata.attrs),
    )


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def classify(call) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        user = [w for w in caught if issubclass(w.category, UserWarning) and _from_sthist(w)]
        if user:
            return "warned", str(user[0].message)[:110]
        return "silent", "no error, no warning"
    except Hang:
        return "hang", f"over {LIMIT_S} s"
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        origin = frames[-1].filename if frames else ""
        where = "clear" if origin.startswith(PACKAGE) else "library"
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return where, f"{type(error).__name__}: {' '.join(str(text).split())[:110]}"
    finally:
        signal.alarm(0)


def _from_sthist(w) -> bool:
    return w.filename.startswith(PACKAGE) or "sthist" in str(w.message) or "section" in str(w.message)


def cli(argv: list[str]) -> tuple[str, str]:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sthist", *argv], capture_output=True, text=True, timeout=LIMIT_S * 3
        )
    except subprocess.TimeoutExpired:
        return "hang", f"over {LIMIT_S * 3} s"
    err = done.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("sthist") and "error" in line]
    if done.returncode == 0:
        return "silent", "exit 0"
    if "Traceback" in done.stderr:
        return "library", err[-1][:110] if err else ""
    return ("clear" if errors else "library"), (errors or err or [""])[0][:110]


def main() -> None:
    sthist.settings.progress = False
    temp_before = set(Path(tempfile.gettempdir()).iterdir())
    sections = sthist.datasets.toy(2, grid=6, n_genes=8, random_state=5)
    model = _fit({"toy0": sections["toy0"]})
    with tempfile.TemporaryDirectory(prefix="sthist-probe-") as folder:
        rows = _cases(Path(folder), sections, model)
    left = sorted(p.name for p in set(Path(tempfile.gettempdir()).iterdir()) - temp_before)
    counts = pd.Series([r["class"] for r in rows]).value_counts()
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(f"\n{len(rows)} cases — {summary}; left in the temp directory: {left or 'nothing'}")
    out = Path(__file__).parent / "results" / "probe.md"
    out.write_text(
        "# Bad-input and fault probe (`python benchmarks/probe.py`)\n\n"
        f"{len(rows)} cases — {summary}. ``warned`` cases are those where a warning is the answer "
        "(out-of-domain input); the data-loss and concurrency faults are tested in `tests/reliability/`. "
        f"Left in the system temp directory after the probe: {len(left)} entries.\n\n"
        + markdown_table(rows)
        + "\n"
    )
    print(f"wrote {out}")


def _without_locks(store: Path) -> None:
    """Take the store's writer lock where ``flock`` answers as on a network file system without locks."""
    import errno
    import fcntl

    real = fcntl.flock

    def no_locks(fd, operation):
        if operation & fcntl.LOCK_UN:
            return None
        raise OSError(errno.ENOLCK, "No locks available")

    fcntl.flock = no_locks
    try:
        with sthist.io.store_lock(store):
            pass
    finally:
        fcntl.flock = real


def _cases(root: Path, sections, model) -> list[dict]:
    """Every probe case run in ``root``: one row per case with its class and what the user sees."""
    import spatialdata as sd

    model_dir = model.save(root / "model")
    empty_model = root / "empty-model"
    empty_model.mkdir()
    store = root / "toy1.zarr"
    sections["toy1"].write(store)
    toy1 = sections["toy1"]
    foreign_results = root / "foreign.csv"
    pd.DataFrame({"fold": [0], "method": ["ridge"], "run_digest": ["another run"]}).to_csv(foreign_results)

    def with_attrs(value):
        s = copy_of(toy1)
        s.attrs["sthist"]["microns_per_pixel"]["global"] = value
        return s

    def with_obs(column, values):
        s = copy_of(toy1)
        s.tables["table"].obs[column] = values
        return s

    def dup_obs():
        s = copy_of(toy1)
        s.tables["table"].obs_names = ["s"] * s.tables["table"].n_obs
        return s

    def dup_var():
        s = copy_of(toy1)
        t = s.tables["table"]
        t.var_names = [t.var_names[0]] * 2 + list(t.var_names[2:])
        return s

    def zero_counts():
        s = copy_of(toy1)
        s.tables["table"].X = s.tables["table"].X * 0
        return s

    def untrained():
        return sthist.models.SthistModel({"toy0": sections["toy0"]}, backbone="tiny", k=5)

    n = toy1.tables["table"].n_obs
    cases = [
        # fit
        ("fit: no sections", lambda: _fit({})),
        ("fit: a path string as sections", lambda: _fit(str(store))),
        ("fit: unknown method", lambda: _fit(toy1, method="magic")),
        ("fit: unknown backbone", lambda: _fit(toy1, backbone="nope")),
        ("fit: genes as one string", lambda: _fit(toy1, genes="gene000")),
        ("fit: empty gene list", lambda: _fit(toy1, genes=[])),
        ("fit: duplicated genes", lambda: _fit(toy1, genes=["gene000"] * 2)),
        ("fit: unmeasured gene", lambda: _fit(toy1, genes=["NOPE"])),
        ("fit: duplicated var names", lambda: _fit(dup_var(), genes=["gene003"])),
        ("fit: k=0", lambda: _fit(toy1, k=0)),
        ("fit: k=1.5", lambda: _fit(toy1, k=1.5)),
        ("fit: n_top_genes=0", lambda: _fit(toy1, data={"n_top_genes": 0})),
        ("fit: max_epochs=0", lambda: _fit(toy1, max_epochs=0)),
        ("fit: batch_size=0", lambda: _fit(toy1, batch_size=0)),
        ("fit: learning_rate=nan", lambda: _fit(toy1, training={"learning_rate": float("nan")})),
        ("fit: learning_rate=-1", lambda: _fit(toy1, training={"learning_rate": -1.0})),
        ("fit: views=9", lambda: _fit(toy1, training={"views": 9})),
        ("fit: patch_size_um=0", lambda: _fit(toy1, patch_size_um=0)),
        ("fit: patch_size_um=nan", lambda: _fit(toy1, patch_size_um=float("nan"))),
        ("fit: missing qc_column", lambda: _fit(toy1, qc_column="nope")),
        (
            "fit: qc_column of strings",
            lambda: _fit(with_obs("q", ["True", "False"] * (n // 2)), qc_column="q"),
        ),
        (
            "fit: qc_column with NaN",
            lambda: _fit(with_obs("q", [1.0, np.nan] * (n // 2)), qc_column="q"),
        ),
        (
            "fit: qc_column pass/fail",
            lambda: _fit(with_obs("q", pd.Categorical(["pass", "fail"] * (n // 2))), qc_column="q"),
        ),
        (
            "fit: all-zero counts, explicit genes",
            lambda: _fit(zero_counts(), genes=["gene000", "gene001"]),
        ),
        ("fit: embedding_dim=0", lambda: _fit(toy1, architecture={"embedding_dim": 0})),
        ("fit: heads not dividing dim", lambda: _fit(toy1, architecture={"heads": 3})),
        ("fit: mask_ratio=1", lambda: _fit(toy1, architecture={"mask_ratio": 1.0})),
        ("fit: token_layers=-1", lambda: _fit(toy1, architecture={"token_layers": -1})),
        ("fit: scale NaN in attrs", lambda: _fit(with_attrs(float("nan")))),
        ("fit: scale 0 in attrs", lambda: _fit(with_attrs(0.0))),
        ("fit: scale 1000 in attrs", lambda: _fit(with_attrs(1000.0))),
        # predict
        ("predict: model is a string", lambda: sthist.tl.predict(copy_of(toy1), "model")),
        ("predict: untrained model", lambda: sthist.tl.predict(copy_of(toy1), untrained())),
        ("predict: key_added with '/'", lambda: sthist.tl.predict(copy_of(toy1), model, key_added="a/b")),
        ("predict: empty key_added", lambda: sthist.tl.predict(copy_of(toy1), model, key_added="")),
        (
            "predict: key_added=spatialdata_attrs",
            lambda: sthist.tl.predict(copy_of(toy1), model, key_added="spatialdata_attrs", overwrite=True),
        ),
        ("predict: genes as one string", lambda: sthist.tl.predict(copy_of(toy1), model, genes="gene000")),
        ("predict: k=0", lambda: sthist.tl.predict(copy_of(toy1), model, k=0)),
        ("predict: k > bank", lambda: sthist.tl.predict(copy_of(toy1), model, k=10_000)),
        ("predict: batch_size=0", lambda: sthist.tl.predict(copy_of(toy1), model, batch_size=0)),
        ("predict: device=cuda without GPU", lambda: sthist.tl.predict(copy_of(toy1), model, device="cuda")),
        ("predict: tta_views=0", lambda: sthist.tl.predict(copy_of(toy1), model, tta_views=0)),
        ("predict: smooth_um=-1", lambda: sthist.tl.predict(copy_of(toy1), model, smooth_um=-1)),
        ("predict: duplicated spot names", lambda: sthist.tl.predict(dup_obs(), model)),
        (
            "predict: qc_column of strings",
            lambda: sthist.tl.predict(with_obs("q", ["True", "False"] * (n // 2)), model, qc_column="q"),
        ),
        ("predict: wrong image_key", lambda: sthist.tl.predict(copy_of(toy1), model, image_key="nope")),
        (
            "predict: wrong coordinate system",
            lambda: sthist.tl.predict(copy_of(toy1), model, coordinate_system="nope"),
        ),
        ("predict: scale NaN in attrs", lambda: sthist.tl.predict(with_attrs(float("nan")), model)),
        ("predict: scale recorded as a string", lambda: sthist.tl.predict(with_attrs("abc"), model)),
        ("predict: 8× coarser scale (upsampled patches)", lambda: sthist.tl.predict(with_attrs(8.0), model)),
        (
            "predict: batch_size=100_000_000",
            lambda: sthist.tl.predict(copy_of(toy1), model, batch_size=100_000_000),
        ),
        ("fit: accelerator='gpu' without a GPU", lambda: _fit(toy1, accelerator="gpu")),
        (
            "predict_stores: accelerator='gpu' without a GPU",
            lambda: sthist.tl.predict_stores([store], model_dir, accelerator="gpu"),
        ),
        ("io.store_lock: a file system without locks", lambda: _without_locks(store)),
        ("fit: a TrainingConfig field passed flat", lambda: _fit(toy1, hed_jitter=0.05)),
        (
            "cross_validate: results file of another run",
            lambda: sthist.tl.cross_validate(
                {"toy0": toy1, "toy1": copy_of(toy1)},
                groups="section",
                methods=["ridge"],
                fit_options=FAST,
                results_file=foreign_results,
            ),
        ),
        # tiles
        ("tiles: stride_um=0", lambda: sthist.tl.predict_tiles(copy_of(toy1), model, stride_um=0)),
        (
            "tiles: stride_um=nan",
            lambda: sthist.tl.predict_tiles(copy_of(toy1), model, stride_um=float("nan")),
        ),
        ("tiles: stride_um=1", lambda: sthist.tl.predict_tiles(copy_of(toy1), model, stride_um=1)),
        ("tiles: stride_um=0.01", lambda: sthist.tl.predict_tiles(copy_of(toy1), model, stride_um=0.01)),
        (
            "tiles: inverted bounds",
            lambda: sthist.tl.predict_tiles(copy_of(toy1), model, bounds=(10, 10, 0, 0)),
        ),
        (
            "tiles: min_tissue_fraction=2",
            lambda: sthist.tl.predict_tiles(copy_of(toy1), model, min_tissue_fraction=2),
        ),
        ("tiles: chunk_tiles=0", lambda: sthist.tl.predict_tiles(copy_of(toy1), model, chunk_tiles=0)),
        (
            "tiles: key_added = spots' shapes",
            lambda: sthist.tl.predict_tiles(copy_of(toy1), model, key_added="spots", overwrite=True),
        ),
        (
            "tiles: key_added = image",
            lambda: sthist.tl.predict_tiles(copy_of(toy1), model, key_added="he", overwrite=True),
        ),
        # evaluate
        ("evaluate: no predictions", lambda: sthist.tl.evaluate(copy_of(toy1))),
        ("evaluate: n_top=0", lambda: sthist.tl.evaluate(copy_of(toy1), n_top=0)),
        # models
        ("load: missing folder", lambda: sthist.models.load(root / "missing")),
        ("load: a file", lambda: sthist.models.load(store / "zarr.json")),
        ("load: empty folder", lambda: sthist.models.load(empty_model)),
        ("save: onto a file", lambda: model.save(store / "zarr.json", overwrite=True)),
        ("save: untrained", lambda: untrained().save(root / "u")),
        # pp / pl / io
        ("normalize: target_sum=0", lambda: sthist.pp.normalize(copy_of(toy1).tables["table"], target_sum=0)),
        (
            "normalize: missing layer",
            lambda: sthist.pp.normalize(copy_of(toy1).tables["table"], layer="nope"),
        ),
        ("select_genes: unknown flavor", lambda: sthist.pp.select_genes(toy1, flavor="best")),
        ("select_genes: n_top=0", lambda: sthist.pp.select_genes(toy1, flavor="hvg", n_top=0)),
        ("set_microns_per_pixel: 'abc'", lambda: sthist.pp.set_microns_per_pixel(copy_of(toy1), "abc")),
        ("qc_spots: min_tissue_fraction=2", lambda: sthist.pp.qc_spots(copy_of(toy1), min_tissue_fraction=2)),
        ("pl.expression: unknown gene", lambda: sthist.pl.expression(copy_of(toy1), ["NOPE"])),
        (
            "write_elements: not backed",
            lambda: sthist.io.write_elements(copy_of(toy1), [("tables", "table")]),
        ),
        (
            "write_elements: unknown kind",
            lambda: sthist.io.write_elements(sd.read_zarr(store), [("cubes", "x")]),
        ),
    ]
    rows = []
    for name, call in cases:
        kind, message = classify(call)
        rows.append({"case": name, "class": kind, "what the user sees": message.replace("|", "/")})
        print(f"{kind:8s} {name}: {message}", flush=True)

    empty = root / "empty.zarr"
    empty.mkdir()
    plain = root / "plain.zarr"
    plain.write_text("x")
    genes_missing = root / "nothing.txt"
    cli_cases = [
        ("cli predict: missing store", ["predict", str(root / "x.zarr"), "--model", str(model_dir)]),
        ("cli predict: empty folder", ["predict", str(empty), "--model", str(model_dir)]),
        ("cli predict: plain file", ["predict", str(plain), "--model", str(model_dir)]),
        ("cli predict: missing model", ["predict", str(store), "--model", str(root / "nope")]),
        ("cli predict: bad key", ["predict", str(store), "--model", str(model_dir), "--key", "a/b"]),
        ("cli predict: empty key", ["predict", str(store), "--model", str(model_dir), "--key", ""]),
        (
            "cli fit: --context-um far",
            ["fit", str(store), "--output", str(root / "m6"), "--context-um", "far"],
        ),
        (
            "cli predict: µm/px far from recorded",
            ["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "14"],
        ),
        (
            "cli predict: µm/px 0",
            ["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "0"],
        ),
        (
            "cli predict: --tiles --stride-um 0",
            ["predict", str(store), "--model", str(model_dir), "--tiles", "--stride-um", "0"],
        ),
        (
            "cli predict: --tiles inverted bounds",
            ["predict", str(store), "--model", str(model_dir), "--tiles", "--bounds", "5", "5", "0", "0"],
        ),
        ("cli fit: --epochs 0", ["fit", str(store), "--output", str(root / "m1"), "--epochs", "0"]),
        ("cli fit: --k 0", ["fit", str(store), "--output", str(root / "m2"), "--k", "0"]),
        ("cli fit: --output is a file", ["fit", str(store), "--output", str(plain)]),
        (
            "cli fit: --devices 100000",
            ["fit", str(store), "--output", str(root / "m3"), "--devices", "100000"],
        ),
        (
            "cli fit: --genes file missing",
            ["fit", str(store), "--output", str(root / "m4"), "--genes", str(genes_missing)],
        ),
        ("cli fit: same store twice", ["fit", str(store), str(store), "--output", str(root / "m5")]),
        ("cli evaluate: no predictions", ["evaluate", str(store)]),
        ("cli evaluate: --n-top 0", ["evaluate", str(store), "--n-top", "0"]),
        (
            "cli plot: output folder missing",
            ["plot", str(store), "--genes", "gene000", "--output", str(root / "no" / "x.png")],
        ),
        (
            "cli plot: --kind tiles without tiles",
            ["plot", str(store), "--kind", "tiles", "--genes", "gene000", "--output", str(root / "t.png")],
        ),
    ]
    for name, argv in cli_cases:
        kind, message = cli(argv)
        rows.append({"case": name, "class": kind, "what the user sees": message.replace("|", "/")})
        print(f"{kind:8s} {name}: {message}", flush=True)

    return rows


if __name__ == "__main__":
    main()

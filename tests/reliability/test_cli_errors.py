"""Mistakes on the command line print one line naming the flag; the qc, version and device options."""

from __future__ import annotations

from pathlib import Path

import pytest

import sthist
from sthist.cli import main


def test_cli_mistakes_print_one_line_naming_the_flag(store, model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    plain = tmp_path / "plain.zarr"
    plain.write_text("not a store")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    cases = [
        (["predict", str(empty), "--model", str(model_dir)], "is not a zarr store"),
        (["predict", str(plain), "--model", str(model_dir)], "is a file, not a SpatialData zarr store"),
        (["predict", str(store), "--model", str(tmp_path)], "not a complete sthist model"),
        (["predict", str(store), "--model", str(model_dir), "--key", "a/b"], "--key='a/b' cannot be stored"),
        (["predict", str(store), "--model", str(model_dir), "--qc-column", "nope"], "no obs column 'nope'"),
        (
            ["predict", str(store), "--model", str(model_dir), "--retrieval-weight", "2"],
            "--retrieval-weight must be a number",
        ),
        (
            ["predict", str(store), "--model", str(model_dir), "--tiles", "--retrieval-weight", "0.5"],
            "--retrieval-weight applies to spots",
        ),
        (["fit", str(store), "--output", str(taken)], "--output .* is a file"),
        (["fit", str(store), "--output", str(tmp_path / "m"), "--devices", "100000"], "--devices 100000"),
        (["fit", str(store), "--output", str(tmp_path / "m"), "--batch-size", "0"], "--batch-size must be"),
        (["evaluate", str(store), "--n-top", "0"], "--n-top must be a positive integer"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"sthist {argv[0]}: error:"), err
        assert __import__("re").search(message, err), (message, err)
        assert "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "predict", str(store), "--model", str(tmp_path)])


def test_read_only_store_is_refused_before_predicting(store, model_dir, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    assert main(["predict", str(store), "--model", str(model_dir)]) == 2
    assert "cannot be written (Read-only file system)" in capsys.readouterr().err


def test_cli_qc_version_and_device(store, model_dir, capsys):
    import spatialdata as sd

    assert main(["qc", str(store)]) == 0
    assert "pass QC" in capsys.readouterr().out
    table = sd.read_zarr(store).tables["table"]
    assert table.obs["sthist_pass_qc"].dtype == bool and "sthist_qc" in table.uns
    assert main(["qc", str(store)]) == 2  # the columns exist: replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    plot = store.parent / "qc.png"
    assert main(["qc", str(store), "--overwrite", "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 10_000
    assert main(["qc", str(store), "--overwrite", "--plot", str(store.parent / "missing" / "qc.png")]) == 2
    assert "--plot" in capsys.readouterr().err
    assert main(["predict", str(store), "--model", str(model_dir), "--qc-column", "sthist_pass_qc"]) == 0
    assert main(["predict", str(store), "--model", str(model_dir), "--key", "cpu", "--device", "cpu"]) == 0
    assert "autosharding" not in capsys.readouterr().err  # other libraries' notices only with --verbose
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("sthist ")


def test_cli_fit_tells_stores_with_the_same_file_name_apart(sections, tmp_path, capsys):
    stores = []
    for folder, name in (("a", "toy0"), ("b", "toy1")):
        (tmp_path / folder).mkdir()
        sections[name].write(tmp_path / folder / "section.zarr")
        stores.append(str(tmp_path / folder / "section.zarr"))
    options = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "16", "--k", "5", "--views", "1"]
    assert main(["fit", *stores, "--output", str(tmp_path / "m"), *options]) == 0
    trained = sthist.models.load(tmp_path / "m").config.training_sections
    assert trained == {"a/section": 36, "b/section": 36}
    assert main(["fit", stores[0], stores[0], "--output", str(tmp_path / "m2"), *options]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_cli_refuses_a_scale_far_from_the_recorded_one(store, model_dir, capsys):
    assert main(["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "14.5"]) == 2
    assert "--microns-per-pixel 14.5 differs from the 1 µm/px recorded in" in capsys.readouterr().err
    assert main(["predict", str(store), "--model", str(model_dir), "--microns-per-pixel", "1450"]) == 2
    assert "outside the plausible range" in capsys.readouterr().err

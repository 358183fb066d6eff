import pytest

import sthist
from sthist.datasets._registry import fetch, registry


def test_registry_lists_pinned_files():
    entries = registry("her2st")
    assert len(entries) == 95
    assert entries["data/ST-cnts/A1.tsv.gz"].startswith("sha256:")


def test_unknown_file():
    with pytest.raises(KeyError, match="not a file of dataset"):
        fetch("her2st", "data/nope.tsv")


def test_missing_local_only_dataset(tmp_path):
    old = sthist.settings.data_dir
    sthist.settings.data_dir = tmp_path
    try:
        with pytest.raises(FileNotFoundError, match="cannot be downloaded by sthist"):
            fetch("seurat-visium", "spatial/scalefactors_json.json")
    finally:
        sthist.settings.data_dir = old


def test_corrupt_file_is_detected(tmp_path, visium_dir):
    target = tmp_path / "seurat-visium" / "spatial"
    target.mkdir(parents=True)
    (target / "scalefactors_json.json").write_text("{}")
    old = sthist.settings.data_dir
    sthist.settings.data_dir = tmp_path
    try:
        with pytest.raises(ValueError, match="does not match its recorded sha256"):
            fetch("seurat-visium", "spatial/scalefactors_json.json")
    finally:
        sthist.settings.data_dir = old


def test_fetch_reads_a_read_only_cache_without_network(her2st_dir):
    # ../shared/data is read-only; a present file with the right checksum is used as it is.
    path = fetch("her2st", "data/ST-spotfiles/A1_selection.tsv")
    assert path == her2st_dir / "data/ST-spotfiles/A1_selection.tsv"

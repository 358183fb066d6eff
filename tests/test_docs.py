"""The tutorial notebook is stored executed, without errors, and is part of the documentation."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TUTORIAL = ROOT / "docs" / "tutorials" / "her2st.ipynb"


def test_tutorial_is_stored_with_outputs():
    import nbformat

    notebook = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert len(code) >= 10
    # Executed top to bottom in one kernel session, none of it skipped or failed.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    figures = [
        out for cell in code for out in cell.outputs if {"image/png", "image/jpeg"} & set(out.get("data", {}))
    ]
    assert len(figures) >= 8  # training, scores, expression, uncertainty, correlation, CV, violin, tiles
    text = "".join(cell.source for cell in notebook.cells)
    for call in (
        "tl.fit",
        "tl.predict",
        "tl.evaluate",
        "tl.cross_validate",
        "pl.expression",
        "pl.uncertainty",
        "pl.tiles",
    ):
        assert call in text
    assert "tutorials/her2st" in (ROOT / "docs" / "index.md").read_text()


@pytest.mark.slow
@pytest.mark.realdata
def test_tutorial_runs(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(TUTORIAL, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3").execute()

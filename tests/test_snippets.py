"""Every snippet in README.md and docs/ runs: Python blocks in order, as a reader pastes them; shell lines parse.

Python blocks of one page share a namespace and run top to bottom in a scratch folder that holds the files
they name (a count table, spot positions and an H&E JPEG; a HEST folder). Fits are shortened (an untrained
tiny encoder, one epoch) so that the page runs in the default suite: what is checked is that every call,
argument and key a page shows exists and works together, not the accuracy of the models.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sthist
from sthist.tl._fit import merge_fit_options

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Settings that make a fit quick; a snippet's own settings are otherwise kept (``training`` merged field by field).
QUICK = {"backbone": "tiny", "pretrained": False, "max_epochs": 1, "training": {"views": 2}}


def blocks(page: Path, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(page.read_text()) if lang == language]


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python")]


def test_the_pages_with_snippets_are_the_ones_expected():
    # A new page with Python snippets is picked up by the parametrisation below; this guards the discovery.
    names = {page.relative_to(ROOT).as_posix() for page in PYTHON_PAGES}
    assert {"README.md", "docs/getting-started.md"} <= names


def _write_inputs(folder: Path) -> None:
    """The files the snippets name: a legacy ST count table, spot pixel positions, a JPEG, HEST, Visium,
    Visium HD and Xenium output folders."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("_hest_layout", Path(__file__).parent / "test_hest.py")
    hest_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hest_tests)

    rng = np.random.default_rng(0)
    ys, xs = np.meshgrid(np.arange(300, 1000, 220.0), np.arange(300, 1000, 200.0), indexing="ij")
    spots = [f"{i}x{j}" for i in range(xs.shape[0]) for j in range(xs.shape[1])]
    pd.DataFrame({"pixel_x": xs.ravel(), "pixel_y": ys.ravel()}, index=spots).to_csv(
        folder / "spots.tsv", sep="\t"
    )
    genes = ["ERBB2", "GRB7", "KRT19", "ACTB", "CD74", "MUC1"]
    pd.DataFrame(rng.poisson(4, (len(spots), len(genes))), index=spots, columns=genes).to_csv(
        folder / "counts.tsv", sep="\t"
    )
    image = (rng.random((1300, 1300, 3)) * 120 + 60).astype(np.uint8)
    Image.fromarray(image).save(folder / "he.jpg")
    for sample in ("TENX95", "NCBI783"):
        hest_tests._write_sample(folder / "data" / "hest", sample)
    from test_visium_hd import _write_outs as write_visium_hd
    from test_xenium import _write_outs as write_xenium

    write_visium_hd(folder / "visium_hd" / "outs", bin_sizes=(16,))
    sthist.datasets.seurat_visium(folder=folder / "spaceranger" / "outs")  # a real Space Ranger output
    write_xenium(folder / "xenium" / "outs")


@pytest.fixture
def quick_fits(monkeypatch):
    """``tl.fit`` and ``tl.cross_validate`` with the quick settings layered over the snippet's own."""
    fit, cross_validate = sthist.tl.fit, sthist.tl.cross_validate

    def quick(options):
        # A configuration given as its dataclass is merged as the dict of its fields.
        options = {
            name: value.to_dict() if name in ("architecture", "training", "data") and hasattr(value, "to_dict")
            else value
            for name, value in (options or {}).items()
        }  # fmt: skip
        return merge_fit_options(options, QUICK)

    @functools.wraps(fit)
    def quick_fit(*args, **kwargs):
        return fit(*args, **quick(kwargs))

    @functools.wraps(cross_validate)
    def quick_cross_validate(*args, fit_options=None, **kwargs):
        return cross_validate(*args, fit_options=quick(fit_options), **kwargs)

    monkeypatch.setattr(sthist.tl, "fit", quick_fit)
    monkeypatch.setattr(sthist.tl, "cross_validate", quick_cross_validate)


@pytest.mark.realdata
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_python_snippets_run(page, tmp_path, monkeypatch, quick_fits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sthist.settings.progress = False
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    namespace: dict = {}
    for number, code in enumerate(blocks(page, "python"), start=1):
        try:
            exec(compile(code, f"{page.name}, block {number}", "exec"), namespace)
        except Exception as error:  # name the block: the traceback points into the page's text
            raise AssertionError(f"{page.name}, Python block {number} failed:\n{code}") from error
        finally:
            plt.close("all")


def _cli_lines(page: Path) -> list[str]:
    lines = []
    for code in blocks(page, "bash"):
        for line in code.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("sthist "):
                lines.append(line)
    return lines


CLI_LINES = [(page, line) for page in PAGES for line in _cli_lines(page)]


@pytest.mark.parametrize("page, line", CLI_LINES, ids=[line for _, line in CLI_LINES])
def test_shell_snippets_parse(page, line):
    """Each ``sthist ...`` line of a page is accepted by the command-line parser (commands, flags, values)."""
    from sthist.cli import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.run)


def test_every_page_with_shell_snippets_shows_the_cli():
    assert any(page.name == "README.md" for page, _ in CLI_LINES)

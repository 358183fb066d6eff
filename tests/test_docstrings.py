"""Every public function documents Parameters, Returns and Examples, and its examples run as written."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import sthist

PUBLIC_MODULES = ["sthist.pp", "sthist.tl", "sthist.pl", "sthist.io"]


def _public_functions():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            item = getattr(module, name)
            if inspect.isfunction(item):
                yield f"{module_name}.{name}", item


@pytest.mark.parametrize(
    ("name", "function"), list(_public_functions()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_function_documented(name, function):
    doc = inspect.getdoc(function) or ""
    for section in ("Parameters\n----------", "Returns\n-------", "Examples\n--------"):
        assert section in doc, f"{name} lacks a {section.splitlines()[0]} section"
    documented = doc.split("Parameters\n----------")[1].split("Returns\n-------")[0]
    for parameter in inspect.signature(function).parameters:
        assert parameter in documented, f"{name} does not document parameter {parameter!r}"
    assert "{" + "plot_output}" not in doc and "{" + "element_keys}" not in doc


def _examples():
    finder = doctest.DocTestFinder()
    for name, function in _public_functions():
        for test in finder.find(function, name, globs={}):
            if test.examples:
                yield test


@pytest.mark.parametrize("test", list(_examples()), ids=lambda t: t.name)
def test_docstring_examples_run(test, monkeypatch, doctest_namespace):
    """Each example runs with conftest's ``doctest_namespace``: ``sthist``, fresh toy ``sections``, a ``model``."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setattr(sthist.settings, "progress", False)
    test.globs.update(doctest_namespace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: pytest.fail(text))
    assert runner.failures == 0

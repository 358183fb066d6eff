"""``sthist.tl.cross_validate``: leave-one-group-out over patients or sections, every method on the same folds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from sthist._constants import Key
from sthist._core._config import METHOD_NAMES, TARGET_SUM
from sthist._core._elements import resolve_elements
from sthist._core._section import Section
from sthist._logging import logger
from sthist.tl._evaluate import evaluation_frames


def section_group(name: str, sdata, groups: str) -> str:
    """Group of a section: its name (``'section'``) or its patient (from attrs or the table's ``obs``)."""
    if groups == "section":
        return name
    if groups != "patient":
        raise ValueError(f"groups must be 'patient' or 'section', got {groups!r}.")
    patient = sdata.attrs.get(Key.attrs.ROOT, {}).get(Key.attrs.PATIENT)
    if patient is None:
        table = sdata.tables[resolve_elements(sdata, require_image=False).table_key]
        if Key.obs.PATIENT not in table.obs:
            raise ValueError(
                f"Section {name!r} has no patient (attrs['sthist']['patient'] or obs['patient'])."
            )
        values = table.obs[Key.obs.PATIENT].unique()
        if len(values) != 1:
            raise ValueError(f"Section {name!r} mixes patients {list(values)}.")
        patient = values[0]
    return str(patient)


def observed_expression(sdata, genes: list[str], target_sum: float) -> pd.DataFrame:
    """Log-normalised expression of those ``genes`` the section measures (from raw counts), nothing written.

    Sections can measure different genes (HER2ST's do): genes of a panel that a held-out section lacks are
    left out of its columns and logged, so they are not scored on it.
    """
    from sthist.pp import normalize

    table = sdata.tables[resolve_elements(sdata, require_image=False).table_key]
    normalised = normalize(table, target_sum=target_sum, inplace=False)
    columns = table.var_names.get_indexer(genes)
    missing = [g for g, c in zip(genes, columns, strict=True) if c < 0]
    if missing:
        logger.info(
            "%d panel genes are not measured in the section and are not scored: %s",
            len(missing),
            missing[:10],
        )
    measured = [g for g, c in zip(genes, columns, strict=True) if c >= 0]
    values = normalised[:, columns[columns >= 0]]
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    return pd.DataFrame(values, index=table.obs_names, columns=measured)


def aligned_frames(sdata, predicted: pd.DataFrame, target_sum: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Observed and predicted expression of one held-out section over the same spots and genes.

    Spots without a prediction (left out by QC) and panel genes the section does not measure are dropped.
    """
    predicted = predicted.dropna()
    observed = observed_expression(sdata, list(predicted.columns), target_sum)
    return observed.loc[predicted.index], predicted[list(observed.columns)]


def cross_validate(
    sections: Mapping,
    *,
    groups: str = "patient",
    methods: Sequence[str] = METHOD_NAMES,
    n_top: int = 50,
    marker_genes: Sequence[str] | None = None,
    fit_options: Mapping | None = None,
    predict_options: Mapping | None = None,
    predict_variants: Mapping[str, Mapping] | None = None,
    token_cache=None,
    return_models: bool = False,
    results_file: str | Path | None = None,
):
    """Leave-one-group-out cross-validation: every method trained and evaluated on identical folds.

    For each group (patient or section) the models are fitted on the other groups' sections only; the gene
    panel is chosen inside each fit from those training sections (unless ``fit_options`` names ``genes``),
    so the held-out sections influence neither the panel nor the model. Each held-out section is then
    predicted and evaluated on its own.

    Parameters
    ----------
    sections
        Dict of section name → SpatialData (images, spots, raw counts).
    groups
        ``'patient'`` or ``'section'``.
    methods
        Methods to compare (see :func:`sthist.tl.fit`).
    n_top
        Size of the HEG/HVG sets of each evaluated section.
    marker_genes
        Marker genes (MG) to summarise.
    fit_options
        Further keyword arguments of :func:`sthist.tl.fit`, the same for every method and fold.
    predict_options
        Keyword arguments of :func:`sthist.tl.predict` (e.g. ``tta_views``, ``smooth_um``).
    predict_variants
        Named sets of :func:`sthist.tl.predict` options, instead of ``predict_options``: each fitted model
        predicts every held-out section once per variant, so settings that differ only at prediction share
        their fits; rows carry the variant's name in a ``variant`` column.
    token_cache
        A :class:`sthist.data.TokenCache`; by default one is made so that each section is encoded once.
    return_models
        Also return the fitted models, ``{(held-out group, method): model}`` (those fitted by this call).
    results_file
        A CSV file that keeps the rows of each fold and method as soon as they are finished. Given again after
        an interruption (Ctrl-C, a killed job), with the same sections and options, finished folds are read
        from it instead of being fitted again; a file written by another run is refused.

    Returns
    -------
    A tidy DataFrame: one row per fold, held-out section, method (and variant) and gene set (HEG@n, HVG@n, MG,
    panel), with ``pearson_mean``, ``pearson_median``, ``spearman_mean``, ``mse_mean``, ``n_genes``, ``n_nan``,
    ``gene_gene_fidelity``, ``training_spots`` and ``panel_size`` (and the models, with ``return_models``).
    Nothing is written into the sections.

    Examples
    --------
    >>> import sthist
    >>> results = sthist.tl.cross_validate(
    ...     sthist.datasets.toy(3), groups="section", methods=["bleep", "ridge"], n_top=5,
    ...     fit_options={"backbone": "tiny", "patch_size_um": 64, "k": 5, "max_epochs": 1, "training": {"views": 1}},
    ... )
    >>> sorted(results["method"].unique()), sorted(results["held_out"].unique())
    (['bleep', 'ridge'], ['toy0', 'toy1', 'toy2'])
    """
    from sthist.data import TokenCache
    from sthist.tl._fit import fit

    if not isinstance(sections, Mapping):
        raise TypeError("sections must be a dict of section name → SpatialData.")
    membership = {name: section_group(name, sdata, groups) for name, sdata in sections.items()}
    distinct = sorted(set(membership.values()))
    if len(distinct) < 2:
        raise ValueError(
            f"Cross-validation needs at least two {groups}s; all sections belong to {distinct}. "
            "Use groups='section' or add sections."
        )
    options = dict(fit_options or {})
    for reserved in ("method", "token_cache", "sdata"):
        if reserved in options:
            raise ValueError(f"fit_options must not set {reserved!r}.")
    if predict_variants is not None and predict_options is not None:
        raise ValueError("Give predict_options or predict_variants, not both.")
    if predict_variants is not None and not predict_variants:
        raise ValueError("predict_variants names no variant: give at least one (an empty dict is no change).")
    variants = {None: predict_options} if predict_variants is None else dict(predict_variants)
    for variant, at_predict in variants.items():
        for reserved in ("inplace", "token_cache", "qc_column", "model", "sdata"):
            if reserved in (at_predict or {}):
                where = "predict_options" if variant is None else f"predict variant {variant!r}"
                raise ValueError(f"{where} must not set {reserved!r}.")
    cache = token_cache if token_cache is not None else TokenCache()
    progress = _ResultsFile(results_file, sections, groups, methods, n_top, marker_genes, options, variants)
    rows, models = progress.rows(), {}
    for fold, held_out in enumerate(distinct):
        train = {name: sdata for name, sdata in sections.items() if membership[name] != held_out}
        test = {name: sdata for name, sdata in sections.items() if membership[name] == held_out}
        for method in methods:
            if progress.finished(fold, method):
                logger.info("fold %d (%s held out), %s: read from %s", fold, held_out, method, results_file)
                continue
            logger.info("fold %d (%s held out): fitting %s on %s", fold, held_out, method, list(train))
            model = fit(train, method=method, token_cache=cache, **options)  # type: ignore[arg-type]
            if return_models:
                models[(held_out, method)] = model
            fold_rows = [
                {"fold": fold, "held_out": held_out, "section": name, "method": method, **row}
                for name, sdata in test.items()
                for row in _evaluated(model, name, sdata, variants, options, n_top, marker_genes, cache)
            ]
            rows += fold_rows
            progress.add(fold_rows)
    table = pd.DataFrame(rows)
    return (table, models) if return_models else table


def _evaluated(model, name: str, sdata, variants, options, n_top, marker_genes, cache) -> list[dict]:
    """Rows of one held-out section predicted by ``model``: one per prediction variant and gene set."""
    from sthist.tl._predict import predict

    target_sum = model.config.normalization.target_sum or TARGET_SUM
    rows = []
    for variant, at_predict in variants.items():
        predicted, _ = cast(
            "tuple[pd.DataFrame, pd.DataFrame]",
            predict(
                Section.resolve(sdata, name=name),  # warnings name the section by its key
                model, inplace=False, token_cache=cache, qc_column=options.get("qc_column"), **(at_predict or {}),
            ),
        )  # fmt: skip
        observed, predicted = aligned_frames(sdata, predicted, target_sum)
        result = evaluation_frames(observed, predicted, n_top=n_top, marker_genes=marker_genes)
        for gene_set, summary in result["summary"].iterrows():
            rows.append(
                {
                    **({} if variant is None else {"variant": variant}),
                    "gene_set": gene_set,
                    **summary.to_dict(),
                    "gene_gene_fidelity": result["gene_gene_fidelity"],
                    "training_spots": sum(model.config.training_sections.values()),
                    "panel_size": len(model.genes),
                }
            )
    return rows


class _ResultsFile:
    """The rows of finished folds kept in a CSV file as they finish, so that an interrupted run resumes.

    Each row carries a digest of the run's sections and options; a file written by another run is refused
    rather than mixed in. The file is rewritten atomically (a complete temporary file renamed over it).
    """

    COLUMN = "run_digest"

    def __init__(self, path, sections, groups, methods, n_top, marker_genes, options, variants):
        import hashlib
        import json

        self.path = None if path is None else Path(path)
        run = {
            "sections": sorted(sections), "groups": groups, "methods": list(methods), "n_top": n_top,
            "marker_genes": None if marker_genes is None else list(marker_genes), "fit_options": options,
            "variants": {str(k): v for k, v in variants.items()},
        }  # fmt: skip
        self.digest = hashlib.sha256(json.dumps(run, sort_keys=True, default=repr).encode()).hexdigest()[:16]
        self.stored = pd.DataFrame()
        if self.path is not None and self.path.exists():
            self.stored = pd.read_csv(self.path)
            found = set(self.stored.get(self.COLUMN, pd.Series(dtype=str)).astype(str))
            if found != {self.digest}:
                raise ValueError(
                    f"{self.path} holds results of another cross-validation (other sections or options); give a "
                    "new results_file, or delete this one to start again."
                )

    def rows(self) -> list[dict]:
        """The rows read from the file (finished folds of an earlier, interrupted run)."""
        if self.stored.empty:
            return []
        return self.stored.drop(columns=self.COLUMN).to_dict(orient="records")

    def finished(self, fold: int, method: str) -> bool:
        if self.stored.empty:
            return False
        return bool(((self.stored["fold"] == fold) & (self.stored["method"] == method)).any())

    def add(self, rows: list[dict]) -> None:
        if self.path is None or not rows:
            return
        import os

        added = pd.DataFrame(rows).assign(**{self.COLUMN: self.digest})
        self.stored = pd.concat([self.stored, added], ignore_index=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        self.stored.to_csv(partial, index=False)
        os.replace(partial, self.path)

"""Set-up of a model from its training sections: normalisation, gene panel, stain record, training targets."""

from __future__ import annotations

import numpy as np
import torch

from sthist._constants import Key
from sthist._core._checks import check_positive_integer, check_smoothing
from sthist._core._config import DataConfig, default_k, default_smooth_um
from sthist._core._section import Section
from sthist._core._stain import StainStats


def prediction_defaults(method: str, k: int | None, smooth_um: float | None) -> tuple[int, float]:
    """``k`` and ``smooth_um`` checked, the method's chosen settings where not given."""
    k = check_positive_integer(default_k(method) if k is None else k, "k")
    return k, check_smoothing(default_smooth_um(method) if smooth_um is None else smooth_um)


def stain_record(sections: dict[str, Section]) -> tuple[dict, StainStats]:
    """The stain record a model keeps (each section's statistics, their average) and the average itself."""
    stats = {name: section.stain for name, section in sections.items()}
    reference = StainStats.average(list(stats.values()))
    record = {
        "method": "reinhard",
        "reference": reference.to_dict(),
        "sections": {name: section_stats.to_dict() for name, section_stats in stats.items()},
    }
    return record, reference


def spot_centres_um(sections: dict[str, Section], dataset) -> np.ndarray:
    """Spot centres in µm, in the dataset's order: the neighbourhoods of the context token (``context_um``)."""
    return np.concatenate([
        sections[name].centres[frame["row"].to_numpy()] * sections[name].scale
        for name, frame in dataset.spots.groupby("section", observed=True, sort=False)
    ])  # fmt: skip


def normalised_sections(
    sections: dict[str, Section], layer: str, target_sum: float
) -> tuple[dict[str, Section], dict]:
    """Sections whose tables carry the normalised layer; tables lacking it are normalised in a copy."""
    from sthist.pp import normalize

    prepared, record = {}, None
    for name, section in sections.items():
        table = section.sdata.tables[section.spots.table_key]
        if layer not in table.layers:
            table = table.copy()
            normalize(table, target_sum=target_sum, key_added=layer)
            section = section.with_table(table)
        section_record = table.uns.get(Key.uns.NORMALIZATION, {}).get(layer)
        if section_record is None:
            raise ValueError(
                f"Section {name!r}: layer {layer!r} has no normalisation record; write it with "
                "`sthist.pp.normalize` (or remove the layer and let fit normalise)."
            )
        if record is not None and section_record != record:
            raise ValueError(
                f"Sections were normalised differently: {record} vs {section_record} ({name!r})."
            )
        record = section_record
        prepared[name] = section
    return prepared, record or {}


def check_variation(dataset, genes: list[str]) -> None:
    """Refuse a panel with nothing to learn (every gene constant over the training spots); warn about some."""
    import warnings

    expression = dataset.expression
    constant = expression.max(axis=0) == expression.min(axis=0)
    if constant.all():
        raise ValueError(
            f"Every gene of the panel is constant over the {len(expression)} training spots (e.g. all counts "
            "zero); there is nothing to learn. Check the counts in the tables and the gene panel."
        )
    if constant.any():
        names = [g for g, c in zip(genes, constant, strict=True) if c]
        warnings.warn(
            f"{len(names)} of {len(genes)} panel genes are constant over the training spots and will be predicted "
            f"as that constant: {names[:10]}.",
            UserWarning,
            stacklevel=3,
        )


def gene_panel(sections: dict[str, Section], data: DataConfig, genes) -> list[str]:
    """The explicit panel (checked against every section) or HEG ∪ HVG over the training sections.

    With ``data.n_top_genes`` ``None``: every gene detected in ≥ 10 % of the spots of every section.
    """
    from sthist.pp import select_genes

    tables = {name: section.table for name, section in sections.items()}
    if genes is not None:
        return select_genes(tables, genes=genes)
    return select_genes(
        tables, flavor="heg+hvg", n_top=data.n_top_genes, layer=data.layer,
        exclude_technical=data.exclude_technical,
    )  # fmt: skip


class WithTargets(torch.utils.data.Dataset):
    """Items of a patch dataset with their expression replaced by prepared targets (same order)."""

    def __init__(self, dataset, targets: torch.Tensor):
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "expression": self.targets[index]}


def recentre(expression: torch.Tensor, sections: torch.Tensor) -> torch.Tensor:
    """Each section's expression shifted so that its mean equals the mean over all training spots.

    The model then learns how expression varies within a section, not how sections differ in depth or
    patient; predictions come out on the training level, and per-section correlations are unaffected.
    """
    overall = expression.mean(dim=0)
    centred = expression.clone()
    for code in sections.unique():
        members = sections == code
        centred[members] += overall - expression[members].mean(dim=0)
    return centred

"""Per-gene reliability of a fitted model, from leave-one-group-out cross-validation, stored in the model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from sthist._logging import logger
from sthist.tl._cross_validate import observed_expression, section_group
from sthist.tl._metrics import gene_pearson

#: Genes whose cross-validated Pearson r falls below this are flagged as unreliable.
DEFAULT_RELIABILITY_THRESHOLD = 0.1


def gene_reliability(
    sections: Mapping,
    model,
    *,
    groups: str = "patient",
    threshold: float = DEFAULT_RELIABILITY_THRESHOLD,
    token_cache=None,
) -> pd.Series:
    """Cross-validated Pearson r of each gene of ``model``, recorded in the model for later predictions.

    The model's method, gene panel and hyperparameters are refitted leaving one group (patient or section)
    out at a time; each held-out section is predicted and each gene's Pearson r across its spots is
    averaged over held-out sections. The result goes to ``model.config['gene_reliability']`` with
    ``threshold``; :func:`sthist.tl.predict` and :func:`sthist.tl.predict_tiles` then flag genes below it
    instead of reporting them silently. ``sections`` should be the model's training sections.
    """
    from sthist.data import TokenCache
    from sthist.tl._fit import fit
    from sthist.tl._predict import predict

    membership = {name: section_group(name, sdata, groups) for name, sdata in sections.items()}
    distinct = sorted(set(membership.values()))
    if len(distinct) < 2:
        raise ValueError(f"Reliability needs at least two {groups}s; all sections belong to {distinct}.")
    config = model.config
    hyper = config["hyperparameters"]
    architecture = {k: v for k, v in config["architecture"].items() if k not in ("token_dim", "n_genes")}
    options = {
        "genes": model.genes,
        "method": model.method,
        "backbone": config["backbone"]["name"],
        "max_epochs": hyper["max_epochs"],
        "batch_size": hyper["batch_size"],
        "learning_rate": hyper["learning_rate"],
        "weight_decay": hyper["weight_decay"],
        "min_learning_rate": hyper["min_learning_rate"],
        "k": hyper["k"],
        "views": hyper["views"],
        "qc_column": hyper["qc_column"],
        "patch_size_um": config["patch"]["size_um"],
        "random_state": config["seed"],
        "embedding_dim": architecture.pop("dim"),
        **architecture,
    }
    cache = token_cache if token_cache is not None else TokenCache()
    per_section = []
    for held_out in distinct:
        train = {n: s for n, s in sections.items() if membership[n] != held_out}
        fold_model = fit(train, token_cache=cache, **options)
        for name, sdata in sections.items():
            if membership[name] != held_out:
                continue
            predicted, _ = predict(
                sdata, fold_model, inplace=False, token_cache=cache, qc_column=hyper["qc_column"]
            )
            predicted = predicted.dropna()
            observed = observed_expression(sdata, model.genes, config["normalization"]["target_sum"]).loc[
                predicted.index
            ]
            per_section.append(gene_pearson(observed, predicted).rename(name))
    reliability = pd.concat(per_section, axis=1).mean(axis=1).rename("reliability")
    model.config["gene_reliability"] = {
        g: (None if np.isnan(r) else float(r)) for g, r in reliability.items()
    }
    model.config["reliability_threshold"] = float(threshold)
    model.config["reliability_groups"] = groups
    logger.info(
        "gene reliability: %d of %d genes below r = %.2f",
        int((~(reliability >= threshold)).sum()),
        len(reliability),
        threshold,
    )
    return reliability

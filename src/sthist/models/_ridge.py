"""HEST-Benchmark ridge protocol on frozen features: StandardScaler → PCA(256) → ridge without intercept."""

from __future__ import annotations

import torch


def fit_ridge(
    features: torch.Tensor, expression: torch.Tensor, *, n_components: int = 256
) -> dict[str, torch.Tensor]:
    """Fit the protocol on pooled encoder features (spots × channels) and expression (spots × genes).

    Ridge strength ``alpha = 100 / (n_components · n_genes)`` as in HEST. The PCA scores are centred, so the
    coefficients equal those of HEST's ridge without intercept; the training mean of the expression is kept
    as an offset so that predictions are on the right level (Pearson correlations are unaffected).
    """
    x = features.double()
    y = expression.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    scaled = (x - mean) / std
    n_components = min(n_components, *scaled.shape)
    _, _, vh = torch.linalg.svd(scaled, full_matrices=False)
    components = vh[:n_components]
    scores = scaled @ components.T
    alpha = 100.0 / (n_components * y.shape[1])
    y_mean = y.mean(0)
    gram = scores.T @ scores + alpha * torch.eye(n_components, dtype=scores.dtype)
    coefficients = torch.linalg.solve(gram, scores.T @ (y - y_mean))
    return {
        "ridge.mean": mean.float(),
        "ridge.std": std.float(),
        "ridge.components": components.float(),
        "ridge.coefficients": coefficients.float(),
        "ridge.offset": y_mean.float(),
    }


def predict_ridge(state: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    scaled = (features.float() - state["ridge.mean"]) / state["ridge.std"]
    return scaled @ state["ridge.components"].T @ state["ridge.coefficients"] + state["ridge.offset"]

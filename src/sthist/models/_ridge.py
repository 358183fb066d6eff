"""Ridge baseline on frozen features: StandardScaler → PCA(256) → ridge without intercept (HEST protocol).

The HEST-Benchmark protocol fixes the ridge strength at ``alpha = 100 / (n_components · n_genes)``: a few
thousandths for a panel of hundreds of genes, so the fit is ordinary least squares on 256 components. On
about a thousand training spots it fits the training sections' noise: on HER2ST, leave one patient out, it
scores below every trained method and moves with the sister section it is tested on. ``alpha="cv"`` (the
default) keeps the protocol and chooses the strength by cross-validation over the training sections;
``alpha="hest"`` reproduces the protocol's strength.

Features of a new section are held to the range each channel spans over the training spots before they are
standardised (:func:`_clipped`). The protocol's StandardScaler divides by each channel's training deviation;
frozen-encoder channels that are (nearly) silent on the training sections but fire on another section then
reach thousands to millions of deviations, and the ridge's predictions on that section collapse while its
sister sections score normally.
"""

from __future__ import annotations

import numpy as np
import torch

#: Ridge strengths tried by ``alpha="cv"`` (in units of the PCA scores' sum of squares).
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-1, 7))
#: Folds of contiguous spots used by ``alpha="cv"`` when the training spots come from one section.
BLOCKS = 5


def ridge_features(tokens: torch.Tensor, context: bool = False) -> torch.Tensor:
    """Features of the protocol from tokens (spots, tokens, channels): the mean token, then the context token."""
    tokens = tokens.float()
    if context:
        return torch.cat([tokens[:, :-1].mean(dim=1), tokens[:, -1]], dim=1)
    return tokens.mean(dim=1)


def _clipped(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Features held to the range each channel spans over the training spots.

    A channel that barely varies over the training spots (an encoder channel that stays at zero there) gets a
    tiny standard deviation; where it does vary, on another section, standardising it gives values of
    thousands to millions of standard deviations, and a linear model extrapolates them into predictions that
    no longer follow the tissue. Held to the training range, such a channel contributes at most what it did
    in training (a channel constant in training contributes nothing).
    """
    return x.clamp(low.to(x.dtype), high.to(x.dtype))


def _pca(x: torch.Tensor, n_components: int):
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    scaled = (x - mean) / std
    n_components = min(n_components, *scaled.shape)
    _, _, vh = torch.linalg.svd(scaled, full_matrices=False)
    components = vh[:n_components]
    return mean, std, components, scaled @ components.T


def _coefficients(scores: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    gram = scores.T @ scores + alpha * torch.eye(scores.shape[1], dtype=scores.dtype)
    return torch.linalg.solve(gram, scores.T @ y)


def _pearson_mean(predicted: torch.Tensor, observed: torch.Tensor) -> float:
    """Mean over genes (columns) of the Pearson r across spots; genes constant in either are skipped."""
    p = predicted - predicted.mean(0)
    o = observed - observed.mean(0)
    denominator = p.norm(dim=0) * o.norm(dim=0)
    valid = denominator > 1e-12
    if not bool(valid.any()):
        return float("nan")
    return float(((p * o).sum(0)[valid] / denominator[valid]).mean())


def choose_alpha(
    x: torch.Tensor, y: torch.Tensor, groups: np.ndarray | None, n_components: int = 256
) -> tuple[float, dict[float, float]]:
    """The strength of :data:`ALPHAS` with the best mean Pearson r over held-out folds, and every score.

    Folds leave one group (training section) out; with a single group the spots are split into
    :data:`BLOCKS` contiguous blocks (the dataset's spatial order), so that held-out spots are not the
    neighbours of training spots.
    """
    labels = np.zeros(len(x), dtype=np.int64) if groups is None else np.asarray(groups)
    if len(np.unique(labels)) < 2:
        labels = np.repeat(np.arange(BLOCKS), int(np.ceil(len(x) / BLOCKS)))[: len(x)]
    scores: dict[float, list[float]] = {alpha: [] for alpha in ALPHAS}
    for label in np.unique(labels):
        test = torch.from_numpy(labels == label)
        if int(test.sum()) < 2 or int((~test).sum()) < 2:
            continue
        mean, std, components, train_scores = _pca(x[~test], n_components)
        held_out = _clipped(x[test], x[~test].min(0).values, x[~test].max(0).values)
        test_scores = ((held_out - mean) / std) @ components.T
        centred = y[~test] - y[~test].mean(0)
        for alpha in ALPHAS:
            predicted = test_scores @ _coefficients(train_scores, centred, alpha)
            scores[alpha].append(_pearson_mean(predicted, y[test]))
    means = {alpha: float(np.nanmean(values)) if values else float("nan") for alpha, values in scores.items()}
    finite = {alpha: value for alpha, value in means.items() if np.isfinite(value)}
    if not finite:
        raise ValueError("Cannot choose the ridge strength: too few training spots for cross-validation.")
    return max(finite, key=finite.__getitem__), means


def fit_ridge(
    features: torch.Tensor,
    expression: torch.Tensor,
    *,
    n_components: int = 256,
    alpha: float | str = "hest",
    groups: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Fit the protocol on pooled encoder features (spots × channels) and expression (spots × genes).

    ``alpha``: ``"hest"`` (``100 / (n_components · n_genes)``, as in HEST), ``"cv"`` (chosen from
    :data:`ALPHAS` by :func:`choose_alpha` over ``groups``) or a number. The PCA scores are centred, so the
    coefficients equal those of a ridge without intercept; the training mean of the expression is kept as an
    offset so that predictions are on the right level (Pearson correlations are unaffected).
    """
    x = features.double()
    y = expression.double()
    mean, std, components, scores = _pca(x, n_components)
    if alpha == "hest":
        strength = 100.0 / (components.shape[0] * y.shape[1])
    elif alpha == "cv":
        strength, _ = choose_alpha(x, y, groups, n_components)
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0:
        strength = float(alpha)
    else:
        raise ValueError(f"alpha must be 'hest', 'cv' or a positive number, got {alpha!r}.")
    y_mean = y.mean(0)
    coefficients = _coefficients(scores, y - y_mean, strength)
    return {
        "ridge.mean": mean.float(),
        "ridge.std": std.float(),
        "ridge.components": components.float(),
        "ridge.coefficients": coefficients.float(),
        "ridge.offset": y_mean.float(),
        "ridge.alpha": torch.tensor([strength], dtype=torch.float32),
        "ridge.low": x.min(0).values.float(),
        "ridge.high": x.max(0).values.float(),
    }


def predict_ridge(state: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Predicted expression from pooled features; features outside the training range are held to it.

    Models saved without the training range (``ridge.low``/``ridge.high``) predict from the features as given.
    """
    features = features.float()
    if "ridge.low" in state and "ridge.high" in state:
        features = _clipped(features, state["ridge.low"], state["ridge.high"])
    scaled = (features - state["ridge.mean"]) / state["ridge.std"]
    return scaled @ state["ridge.components"].T @ state["ridge.coefficients"] + state["ridge.offset"]

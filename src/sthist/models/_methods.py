"""One strategy object per method: how it builds its modules, what it keeps after training, how it predicts.

Nothing else in sthist branches on a method's name; it asks the method (``get_method(name)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sthist._core._config import ArchitectureConfig
from sthist.models._modules import ContrastiveModel, RegressionModel
from sthist.models._ridge import fit_ridge, predict_ridge, ridge_features


@dataclass(frozen=True)
class Method:
    """How a method trains and predicts.

    Attributes
    ----------
    name
        Name used in ``tl.fit(method=...)`` and recorded in saved models.
    retrieval
        Predictions average the expression of the ``k`` most similar reference spots (``k`` applies, and
        the spread of those spots is reported as uncertainty).
    trainable
        Trained by gradient descent (Lightning) on tokens or patches; otherwise fitted in closed form on
        frozen features.
    description
        One line for listings and error messages.
    """

    name: str
    retrieval: bool
    trainable: bool
    description: str

    def build(self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig) -> nn.Module | None:
        """The trainable torch module (``None`` for closed-form methods)."""
        return None

    def prepare(self, module: nn.Module, expression: torch.Tensor) -> None:
        """Set what the module needs from the training targets before training (nothing by default)."""

    def fit_closed_form(
        self, tokens: torch.Tensor, expression: torch.Tensor, *, architecture: ArchitectureConfig, groups=None
    ) -> dict[str, torch.Tensor]:
        """State of a closed-form method from frozen tokens (spots, tokens, channels) and expression.

        ``groups`` labels each spot's section (for choices made by cross-validation over sections).
        """
        raise NotImplementedError(f"{self.name} is trained, not fitted in closed form.")

    def reference(self, module: nn.Module, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors kept beside the trained module (the retrieval bank); none by default."""
        return {}

    def state_shapes(
        self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig
    ) -> dict[str, tuple]:
        """Shapes of the tensors kept beside the module (``None`` for a size the model chooses)."""
        return {}

    def check_state(
        self,
        state: dict[str, torch.Tensor],
        *,
        token_dim: int,
        n_genes: int,
        architecture: ArchitectureConfig,
        source,
    ) -> None:
        """Refuse a saved state that lacks a tensor the method predicts with or holds one of the wrong shape."""
        expected = self.state_shapes(token_dim=token_dim, n_genes=n_genes, architecture=architecture)
        missing = [name for name in expected if name not in state]
        if missing:
            raise ValueError(f"{source} lacks the tensors {missing} that a {self.name} model predicts with.")
        sizes: dict[int, int] = {}
        for name, shape in expected.items():
            actual = tuple(state[name].shape)
            free = [i for i, size in enumerate(shape) if size is None]
            matches = len(actual) == len(shape) and all(
                size is None or size == got for size, got in zip(shape, actual, strict=True)
            )
            # Sizes the model chooses (None) must agree between tensors: the first axis of the bank.
            for i in free:
                if matches and sizes.setdefault(i, actual[i]) != actual[i]:
                    matches = False
            if not matches:
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {actual}, but this {self.name} model needs "
                    f"{tuple('any' if s is None else s for s in shape)}; the weights do not belong to its config."
                )

    @torch.inference_mode()
    def predict(
        self,
        module: nn.Module | None,
        state: dict[str, torch.Tensor],
        tokens: torch.Tensor,
        k: int,
        retrieval_weight: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expression (spots × genes) and its spread (NaN where the method has none) from encoder tokens.

        ``retrieval_weight`` is the share of retrieval in a prediction that blends it with a decoder.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Retrieval(Method):
    """Contrastive image–expression embeddings; prediction averages the ``k`` nearest reference spots.

    With ``branches`` (CMRCNet) the module also trains the reconstruction branch and the expression
    decoder its architecture asks for, and predictions blend retrieval with the decoder
    (``retrieval_weight``).
    """

    branches: bool = False

    def build(self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig) -> nn.Module:
        return ContrastiveModel(
            token_dim=token_dim, n_genes=n_genes, architecture=architecture, branches=self.branches
        )

    def prepare(self, module: nn.Module, expression: torch.Tensor) -> None:
        if not isinstance(module, ContrastiveModel):
            raise TypeError(f"Retrieval needs a ContrastiveModel, got {type(module).__name__}.")
        module.set_target_scale(expression)

    @torch.inference_mode()
    def reference(self, module: nn.Module, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(module, ContrastiveModel):
            raise TypeError(f"Retrieval needs a ContrastiveModel, got {type(module).__name__}.")
        embeddings = torch.cat([module.spot_embedding(chunk) for chunk in expression.split(1024)])
        return {
            "bank.embeddings": torch.nn.functional.normalize(embeddings, dim=1),
            "bank.expression": expression.clone(),
        }

    def state_shapes(self, *, token_dim, n_genes, architecture):
        return {"bank.embeddings": (None, architecture.embedding_dim), "bank.expression": (None, n_genes)}

    @torch.inference_mode()
    def predict(self, module, state, tokens, k, retrieval_weight=1.0):
        pooled = module.encode(tokens)[1]
        image = module.image_head(pooled)
        weight = 1.0 if module.decoder is None else float(retrieval_weight)
        if weight == 0:  # the decoder alone: no neighbours, no spread
            decoded = module.decode(pooled)
            return decoded, torch.full_like(decoded, float("nan"))
        neighbours = retrieve(torch.nn.functional.normalize(image, dim=1), state["bank.embeddings"], k)
        expression = state["bank.expression"][neighbours]  # (spots, k, genes)
        mean, spread = expression.mean(dim=1), expression.std(dim=1, unbiased=False)
        if weight < 1:
            mean = weight * mean + (1 - weight) * module.decode(pooled)
        return mean, spread


@dataclass(frozen=True)
class Regression(Method):
    """Image encoder + MLP head trained with MSE."""

    def build(self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig) -> nn.Module:
        return RegressionModel(token_dim=token_dim, n_genes=n_genes, architecture=architecture)

    def prepare(self, module: nn.Module, expression: torch.Tensor) -> None:
        if not isinstance(module, RegressionModel):
            raise TypeError(f"Regression needs a RegressionModel, got {type(module).__name__}.")
        module.set_target_scale(expression)

    @torch.inference_mode()
    def predict(self, module, state, tokens, k, retrieval_weight=1.0):
        prediction = module.regress(tokens)
        return prediction, torch.full_like(prediction, float("nan"))


@dataclass(frozen=True)
class Ridge(Method):
    """HEST-Benchmark protocol on frozen features: StandardScaler → PCA(256) → ridge."""

    def prepare(self, module: nn.Module, expression: torch.Tensor) -> None:
        """Set what the module needs from the training targets before training (nothing by default)."""

    def fit_closed_form(self, tokens, expression, *, architecture, groups=None):
        features = ridge_features(tokens, context=architecture.context_um is not None)
        return fit_ridge(features, expression, alpha=architecture.ridge_alpha, groups=groups)

    def state_shapes(self, *, token_dim, n_genes, architecture):
        features = token_dim * (1 if architecture.context_um is None else 2)
        return {
            "ridge.mean": (features,),
            "ridge.std": (features,),
            "ridge.components": (None, features),
            "ridge.coefficients": (None, n_genes),
            "ridge.offset": (n_genes,),
        }

    @torch.inference_mode()
    def predict(self, module, state, tokens, k, retrieval_weight=1.0):
        # The features' size tells whether the model was fitted with a context token (twice the channels).
        context = state["ridge.mean"].shape[0] == 2 * tokens.shape[-1]
        prediction = predict_ridge(state, ridge_features(tokens, context=context))
        return prediction, torch.full_like(prediction, float("nan"))


def retrieve(query: torch.Tensor, bank: torch.Tensor, k: int, *, chunk: int = 1024) -> torch.Tensor:
    """Indices (queries × k) of the ``k`` most similar bank rows by dot product (cosine for unit vectors)."""
    if k > len(bank):
        raise ValueError(f"k={k} exceeds the {len(bank)} spots of the reference bank; choose a smaller k.")
    out = torch.empty((len(query), k), dtype=torch.long)
    for start in range(0, len(query), chunk):
        out[start : start + chunk] = (query[start : start + chunk] @ bank.T).topk(k, dim=1).indices
    return out


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Retrieval(
            "cmrcnet", retrieval=True, trainable=True, branches=True,
            description="contrastive + cross-modal mask reconstruction + expression decoder; retrieval blended with the decoder",
        ),
        Retrieval("bleep", retrieval=True, trainable=True, description="contrastive only, retrieval"),
        Regression("regression", retrieval=False, trainable=True, description="MLP head, MSE"),
        Ridge("ridge", retrieval=False, trainable=False, description="HEST ridge protocol on frozen features"),
    )
}  # fmt: skip


def get_method(name: str) -> Method:
    """The method registered under ``name``, with the list of methods when it is unknown."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}.")
    return METHODS[name]

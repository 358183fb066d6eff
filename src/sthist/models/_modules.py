"""CMRCNet's torch modules: projection heads, gene tokens, cross-modal mask reconstruction, losses.

Implemented from the description in Liu et al., "Spatial Transcriptomics Expression Prediction from
Histopathology Based on Cross-Modal Mask Reconstruction and Contrastive Learning" (Medical Image Analysis
108, 103889, 2025) and BLEEP (Xie et al., NeurIPS 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sthist._core._config import ArchitectureConfig
from sthist.data import is_token_summary, summarise_tokens


class ProjectionHead(nn.Module):
    """Linear projection, GELU, linear, dropout, residual to the projection, LayerNorm (as in BLEEP)."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.projection = nn.Linear(in_features, out_features)
        self.fc = nn.Linear(out_features, out_features)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.norm(self.dropout(self.fc(F.gelu(projected))) + projected)


class GeneTokenizer(nn.Module):
    """Self-normalising network turning an expression vector into ``n_tokens`` gene tokens of ``dim``."""

    def __init__(self, n_genes: int, n_tokens: int, dim: int, dropout: float):
        super().__init__()
        self.n_tokens, self.dim = n_tokens, dim
        self.network = nn.Sequential(nn.Linear(n_genes, n_tokens * dim), nn.ELU(), nn.AlphaDropout(dropout))

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        return self.network(expression).view(-1, self.n_tokens, self.dim)


def attend(attention: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``attention(query, memory, memory)`` (batch first, no mask, no weights returned) with less overhead.

    The same projections, scaled dot-product attention (dropout on the weights while training) and output
    projection as :class:`torch.nn.MultiheadAttention`, drawing the same random numbers, but without its
    packing and copies: on small token sets on the CPU those took a quarter of the reconstruction branch's
    time. The module keeps holding the weights, so saved models load as before. ``memory is query`` is
    self-attention (one projection for queries, keys and values).
    """
    dim, heads = attention.embed_dim, attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if memory is query:
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        q = F.linear(query, weight[:dim], None if bias is None else bias[:dim])
        k, v = F.linear(memory, weight[dim:], None if bias is None else bias[dim:]).chunk(2, dim=-1)

    def by_head(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    dropout = attention.dropout if attention.training else 0.0
    attended = F.scaled_dot_product_attention(by_head(q), by_head(k), by_head(v), dropout_p=dropout)
    return attention.out_proj(attended.transpose(1, 2).flatten(2))


class FusionBlock(nn.Module):
    """Self-attention over image tokens, then co-attention to gene tokens, each with a residual, then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.co_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](image_tokens + attend(self.self_attention, image_tokens, image_tokens))
        x = self.norms[1](x + attend(self.co_attention, x, gene_tokens))
        return self.norms[2](x + self.mlp(x))


class MaskReconstruction(nn.Module):
    """Training-only branch: masked image tokens attend to gene tokens and reconstruct the global image embedding.

    About ``mask_ratio`` of the entries of the projected image tokens are zeroed; the masked tokens query the
    gene tokens (cross-attention, residual), pass ``blocks`` fusion blocks, are mean-pooled and projected to the
    embedding space.
    """

    def __init__(
        self,
        dim: int = ArchitectureConfig.embedding_dim,
        heads: int = ArchitectureConfig.heads,
        blocks: int = ArchitectureConfig.fusion_blocks,
        mask_ratio: float = ArchitectureConfig.mask_ratio,
        dropout: float = ArchitectureConfig.dropout,
    ):
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}.")
        self.mask_ratio = mask_ratio
        self.cross_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([FusionBlock(dim, heads, dropout) for _ in range(blocks)])
        self.head = nn.Linear(dim, dim)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand_like(image_tokens) >= self.mask_ratio).to(image_tokens.dtype)
        masked = image_tokens * keep
        x = self.norm(masked + attend(self.cross_attention, masked, gene_tokens))
        for block in self.blocks:
            x = block(x, gene_tokens)
        return self.head(x.mean(dim=1))


def pool_token_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool tokens (B, N, D) laid out on a square grid to ``side`` × ``side`` tokens.

    A sequence that is not a square grid is pooled along its length to ``side²`` tokens; ``side=0`` or a grid
    no larger than ``side`` returns the tokens unchanged.
    """
    batch, n, dim = tokens.shape
    if side == 0 or n <= side * side:
        return tokens
    grid = math.isqrt(n)
    channels_first = tokens.transpose(1, 2)
    if grid * grid == n:
        pooled = F.adaptive_avg_pool2d(channels_first.reshape(batch, dim, grid, grid), side).flatten(2)
    else:
        pooled = F.adaptive_avg_pool1d(channels_first, side * side)
    return pooled.transpose(1, 2)


def token_grid(architecture: ArchitectureConfig) -> int | None:
    """The summary of a patch's tokens that models of ``architecture`` train on (:func:`summarise_tokens`).

    ``None`` (every token) with token layers or an unpooled reconstruction branch, else the reconstruction
    grid; a model that does not reconstruct reads only the mean of the summary, which equals that of the tokens.
    """
    if architecture.token_layers or not architecture.reconstruction_grid:
        return None
    return architecture.reconstruction_grid


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along the batch whose backward returns each process the gradient summed over processes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.batch, ctx.rank = x.shape[0], dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        if len({int(size) for size in sizes}) != 1:
            raise ValueError("Every process must contribute the same batch size (use drop_last=True).")
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes along the batch, keeping gradients (identity without DDP).

    Every process then computes the loss over the global batch; with DDP's gradient averaging the update
    equals that of one process holding the whole batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def bleep_loss(
    image_embeddings: torch.Tensor,
    spot_embeddings: torch.Tensor,
    temperature: float = ArchitectureConfig.temperature,
) -> torch.Tensor:
    """BLEEP's soft-target contrastive loss over a batch (symmetric cross-entropy).

    Logits are spot·imageᵀ/τ; the targets are the softmax of the mean of the image–image and spot–spot
    similarity matrices times τ.
    """
    logits = spot_embeddings @ image_embeddings.T / temperature
    image_similarity = image_embeddings @ image_embeddings.T
    spot_similarity = spot_embeddings @ spot_embeddings.T
    targets = F.softmax((image_similarity + spot_similarity) / 2 * temperature, dim=-1)
    spots_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=1)
    images_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(dim=1)
    return ((spots_loss + images_loss) / 2).mean()


class _TokenModel(nn.Module):
    """Projects encoder tokens (B, N, C) to ``embedding_dim`` and pools them: the image side of every method.

    With ``architecture.context_um`` the last token is the spot's context (the mean token of its
    neighbourhood, :func:`sthist.data.add_context`): it has its own projection, added to the pooled spot
    tokens. Without token layers the module reads the patch's tokens through their summary at
    ``token_grid`` (:func:`sthist.data.summarise_tokens`), so it takes every token or a summary alike.
    """

    def __init__(self, token_dim: int, architecture: ArchitectureConfig):
        super().__init__()
        self.architecture = architecture
        dim = architecture.embedding_dim
        self.token_projection = nn.Linear(token_dim, dim)
        #: Summary the module reads the tokens through (None: every token, for token layers).
        self.token_grid = token_grid(architecture)
        self.context_projection = None if architecture.context_um is None else nn.Linear(token_dim, dim)
        self.token_encoder: nn.Module | None = None
        if architecture.token_layers:
            layer = nn.TransformerEncoderLayer(
                dim, architecture.heads, 2 * dim, architecture.dropout, activation="gelu", batch_first=True,
                norm_first=True,
            )  # fmt: skip
            self.token_encoder = nn.TransformerEncoder(
                layer, architecture.token_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
            )

    def image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected (and, with ``token_layers``, encoded) image tokens (B, N, embedding_dim) of the patch."""
        if self.context_projection is not None:
            tokens = tokens[:, :-1]
        if self.token_encoder is not None:
            return self.token_encoder(self.token_projection(tokens.float()))
        return self.token_projection(summarise_tokens(tokens, self.token_grid).float())

    def regions(self, projected: torch.Tensor) -> torch.Tensor:
        """The regional tokens of projected image tokens, a square grid of ``reconstruction_grid`` per side (0: every token)."""
        if is_token_summary(projected.shape[1], self.token_grid):
            return projected[:, :-1]  # the balancing token closes a summary
        return pool_token_grid(projected, self.architecture.reconstruction_grid)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch's projected tokens (B, N, d) and the pooled image representation (B, d), context added."""
        projected = self.image_tokens(tokens)
        pooled = projected.mean(dim=1)
        if self.context_projection is not None:
            pooled = pooled + self.context_projection(tokens[:, -1].float())
        return projected, pooled


class ContrastiveModel(_TokenModel):
    """Image and spot embeddings aligned by BLEEP's contrastive loss; CMRCNet adds its training branches.

    With ``branches=True`` (CMRCNet) and ``architecture.reconstruction_weight > 0`` a training-only branch
    makes gene tokens from the expression, masks the projected image tokens (pooled to
    ``reconstruction_grid`` × ``reconstruction_grid`` regions) and reconstructs the global image embedding
    from them (:class:`MaskReconstruction`). With ``architecture.decoder_weight > 0`` an expression decoder
    regresses the standardised expression from the pooled image representation (the image head's input). The loss is ``log(1 + contrastive) +
    w_r · log(1 + reconstruction) + w_d · log(1 + decoder MSE)``. With ``branches=False`` it is BLEEP.
    """

    target_mean: torch.Tensor
    target_scale: torch.Tensor

    def __init__(self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig, branches: bool):
        super().__init__(token_dim, architecture)
        dim, dropout = architecture.embedding_dim, architecture.dropout
        self.temperature = architecture.temperature
        self.image_head = ProjectionHead(dim, dim, dropout)
        self.spot_head = ProjectionHead(n_genes, dim, dropout)
        self.gene_tokenizer = None
        self.reconstruction = None
        self.decoder: nn.Module | None = None
        self.reconstruction_weight = architecture.reconstruction_weight if branches else 0.0
        self.decoder_weight = architecture.decoder_weight if branches else 0.0
        if self.reconstruction_weight:
            self.gene_tokenizer = GeneTokenizer(n_genes, architecture.gene_tokens, dim, dropout)
            self.reconstruction = MaskReconstruction(
                dim, architecture.heads, architecture.fusion_blocks, architecture.mask_ratio, dropout
            )
        if self.decoder_weight:
            self.decoder = nn.Sequential(
                nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, n_genes)
            )
            self.register_buffer("target_mean", torch.zeros(n_genes))
            self.register_buffer("target_scale", torch.ones(n_genes))

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding of patches from their encoder tokens (B, N, C) → (B, dim)."""
        return self.image_head(self.encode(tokens)[1])

    def spot_embedding(self, expression: torch.Tensor) -> torch.Tensor:
        return self.spot_head(expression)

    @torch.no_grad()
    def set_target_scale(self, expression: torch.Tensor) -> None:
        """Standardise the decoder's targets with the per-gene mean and deviation of the training expression."""
        if self.decoder is not None:
            self.target_mean.copy_(expression.float().mean(dim=0))
            self.target_scale.copy_(standard_deviation(expression))

    def decode(self, pooled: torch.Tensor) -> torch.Tensor:
        """Expression (training units) the decoder reads from pooled image representations (B, dim)."""
        if self.decoder is None:
            raise ValueError("This model has no expression decoder (decoder_weight=0).")
        return self.decoder(pooled) * self.target_scale + self.target_mean

    def losses(self, tokens: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses of a batch; under DDP the contrastive loss sees the global batch."""
        projected, pooled = self.encode(tokens)
        image = self.image_head(pooled)
        spot = self.spot_head(expression)
        contrastive = bleep_loss(gather_with_grad(image), gather_with_grad(spot), self.temperature)
        loss = torch.log1p(contrastive)
        parts = {"contrastive": contrastive.detach()}
        if self.reconstruction is not None and self.gene_tokenizer is not None:
            regions, genes, target = self.regions(projected), expression, image
            share = self.architecture.reconstruction_share
            if self.training and share < 1:  # a random share of the batch's spots
                chosen = torch.randperm(len(regions), device=regions.device)[
                    : max(1, round(share * len(regions)))
                ]
                regions, genes, target = regions[chosen], genes[chosen], target[chosen]
            reconstructed = self.reconstruction(regions, self.gene_tokenizer(genes))
            if self.architecture.detach_target:
                target = target.detach()
            reconstruction = F.mse_loss(reconstructed, target)
            loss = loss + self.reconstruction_weight * torch.log1p(reconstruction)
            parts["reconstruction"] = reconstruction.detach()
        if self.decoder is not None:
            target = (expression.float() - self.target_mean) / self.target_scale
            decoder = F.mse_loss(self.decoder(pooled), target)
            loss = loss + self.decoder_weight * torch.log1p(decoder)
            parts["decoder"] = decoder.detach()
        if len(parts) == 1:  # BLEEP: the contrastive loss itself
            loss = contrastive
        return {"loss": loss, **parts}


def standard_deviation(expression: torch.Tensor) -> torch.Tensor:
    """Per-gene deviation of training expression, 1 where a gene does not vary (its targets stay finite)."""
    scale = expression.float().std(dim=0, unbiased=False)
    return torch.where(scale > 1e-6, scale, torch.ones_like(scale))


class RegressionModel(_TokenModel):
    """Direct regression: MLP head on the pooled projected tokens, trained with MSE on standardised genes.

    Targets are standardised per gene with the training mean and deviation (``set_target_scale``), so every
    gene weighs the same in the loss; on raw log expression the loss is dominated by the genes of highest
    variance and by a shared level, and the predictions of different genes move together.
    ``regress`` returns expression in the training units.
    """

    target_mean: torch.Tensor
    target_scale: torch.Tensor

    def __init__(self, *, token_dim: int, n_genes: int, architecture: ArchitectureConfig):
        super().__init__(token_dim, architecture)
        dim = architecture.embedding_dim
        self.regression_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(architecture.dropout), nn.Linear(dim, n_genes)
        )
        self.register_buffer("target_mean", torch.zeros(n_genes))
        self.register_buffer("target_scale", torch.ones(n_genes))
        self._register_load_state_dict_pre_hook(_unit_target_scale)

    @torch.no_grad()
    def set_target_scale(self, expression: torch.Tensor) -> None:
        """Standardise targets with the per-gene mean and deviation of the training expression."""
        self.target_mean.copy_(expression.float().mean(dim=0))
        self.target_scale.copy_(standard_deviation(expression))

    def standardised(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.regression_head(self.encode(tokens)[1])

    def regress(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.standardised(tokens) * self.target_scale + self.target_mean

    def losses(self, tokens: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        target = (expression.float() - self.target_mean) / self.target_scale
        loss = F.mse_loss(self.standardised(tokens), target)
        return {"loss": loss, "mse": loss.detach()}


def _unit_target_scale(state_dict, prefix, *args, **kwargs) -> None:
    """Models saved before targets were standardised predict in training units directly: mean 0, scale 1."""
    for name, fill in (("target_mean", torch.zeros), ("target_scale", torch.ones)):
        key = prefix + name
        if key not in state_dict:
            n_genes = state_dict[prefix + "regression_head.3.bias"].shape[0]
            state_dict[key] = fill(n_genes)

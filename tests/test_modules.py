import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sthist.models import ArchitectureConfig, ContrastiveModel, bleep_loss
from sthist.models._modules import MaskReconstruction, pool_token_grid


def test_bleep_loss_by_hand():
    rng = np.random.default_rng(0)
    image, spot = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    tau = 0.7
    logits = spot @ image.T / tau
    mixed = (image @ image.T + spot @ spot.T) / 2 * tau
    targets = np.exp(mixed) / np.exp(mixed).sum(1, keepdims=True)

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    spots_loss = -(targets * log_softmax(logits)).sum(1)
    images_loss = -(targets.T * log_softmax(logits.T)).sum(1)
    expected = ((spots_loss + images_loss) / 2).mean()
    value = bleep_loss(torch.tensor(image), torch.tensor(spot), tau)
    assert float(value) == pytest.approx(expected, rel=1e-10)


def test_mask_ratio():
    torch.manual_seed(0)
    branch = MaskReconstruction(dim=16, heads=2, mask_ratio=0.5)
    tokens = torch.ones(8, 10, 16)
    kept = (torch.rand_like(tokens) >= 0.5).float().mean()
    assert 0.45 < float(kept) < 0.55
    assert branch(tokens, torch.ones(8, 3, 16)).shape == (8, 16)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskReconstruction(mask_ratio=1.0)


def test_pool_token_grid_averages_regions():
    # A 4 × 4 grid whose token value is its row: pooled to 2 × 2, each region averages two rows.
    rows = torch.arange(4.0).repeat_interleave(4).view(1, 16, 1).expand(2, 16, 3)
    pooled = pool_token_grid(rows, 2)
    assert pooled.shape == (2, 4, 3)
    assert pooled[0, :, 0].tolist() == [0.5, 0.5, 2.5, 2.5]
    assert pool_token_grid(rows, 0) is rows  # 0: every token
    assert pool_token_grid(rows, 4) is rows  # already no larger than the grid
    sequence = torch.arange(10.0).view(1, 10, 1)  # not a square grid: pooled along the sequence
    assert pool_token_grid(sequence, 2).shape == (1, 4, 1)
    assert float(pool_token_grid(sequence, 2).mean()) == pytest.approx(4.5, abs=0.5)


def test_reconstruction_grid_sets_the_branch_tokens():
    seen = []
    architecture = ArchitectureConfig(
        embedding_dim=8, heads=2, reconstruction_grid=2, reconstruction_share=1.0
    )
    model = ContrastiveModel(token_dim=6, n_genes=5, architecture=architecture, branches=True)
    model.reconstruction.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    losses = model.losses(torch.randn(4, 49, 6), torch.rand(4, 5))
    assert seen == [(4, 4, 8)] and torch.isfinite(losses["loss"])
    with pytest.raises(ValueError, match="reconstruction_grid"):
        ArchitectureConfig(reconstruction_grid=-1)
    with pytest.raises(ValueError, match="reconstruction_grid"):
        ArchitectureConfig(reconstruction_grid=1.5)


def test_reconstruction_share_reconstructs_a_random_share_of_the_batch_in_training_only():
    seen = []
    architecture = ArchitectureConfig(
        embedding_dim=8, heads=2, reconstruction_grid=2, reconstruction_share=0.25
    )
    model = ContrastiveModel(token_dim=6, n_genes=5, architecture=architecture, branches=True)
    model.reconstruction.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    tokens, expression = torch.randn(8, 49, 6), torch.rand(8, 5)
    model.set_target_scale(expression)
    torch.manual_seed(0)
    first = model.losses(tokens, expression)
    assert seen[0].shape == (2, 4, 8) and torch.isfinite(first["loss"])
    first["loss"].backward()  # the chosen spots carry the gradient
    assert all(p.grad is not None for p in model.reconstruction.parameters())
    torch.manual_seed(1)
    model.losses(tokens, expression)
    torch.manual_seed(0)
    model.losses(tokens, expression)
    assert seen[1].shape == (2, 4, 8)
    assert not torch.equal(seen[0], seen[1])  # another draw of spots (or mask) at another step
    assert torch.allclose(seen[0].abs().sum(), seen[2].abs().sum())  # the same seed draws the same spots
    model.eval()
    model.losses(tokens, expression)
    assert seen[-1].shape == (8, 4, 8)  # evaluation scores the whole batch
    # A share too small for one spot still reconstructs one.
    tiny = ContrastiveModel(
        token_dim=6, n_genes=5, branches=True,
        architecture=ArchitectureConfig(embedding_dim=8, heads=2, reconstruction_share=0.01),
    )  # fmt: skip
    tiny.reconstruction.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    tiny.losses(tokens, expression)
    assert seen[-1][0] == 1


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, float("nan"), True, "half"])
def test_reconstruction_share_is_checked(value):
    with pytest.raises(ValueError, match="reconstruction_share"):
        ArchitectureConfig(reconstruction_share=value)


def _model(seed: int) -> ContrastiveModel:
    torch.manual_seed(seed)
    architecture = ArchitectureConfig(embedding_dim=8, dropout=0.0)
    return ContrastiveModel(token_dim=6, n_genes=5, architecture=architecture, branches=False)


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, generator=generator), torch.rand(8, 5, generator=generator)


def _worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model(0)
    tokens, expression = _batch()
    local = slice(rank * 4, (rank + 1) * 4)
    loss = model.losses(tokens[local], expression[local])["loss"]
    loss.backward()
    for parameter in model.parameters():  # what DDP does: average gradients over processes
        dist.all_reduce(parameter.grad)
        parameter.grad /= world
    if rank == 0:
        queue.put((float(loss.detach()), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}))
    dist.barrier()
    dist.destroy_process_group()


def test_contrastive_loss_under_ddp_sees_the_global_batch():
    # Two CPU processes with 4 spots each give the loss and gradients of one process with all 8.
    model = _model(0)
    tokens, expression = _batch()
    loss = model.losses(tokens, expression)["loss"]
    loss.backward()
    context = mp.get_context("spawn")
    queue = context.Queue()
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [context.Process(target=_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    ddp_loss, ddp_grads = queue.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert ddp_loss == pytest.approx(float(loss), rel=1e-4)  # float32 sums in another order
    for name, parameter in model.named_parameters():
        np.testing.assert_allclose(ddp_grads[name], parameter.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_regression_trains_on_standardised_genes_and_predicts_in_units():
    from sthist.models import get_method
    from sthist.models._modules import RegressionModel

    torch.manual_seed(0)
    architecture = ArchitectureConfig(embedding_dim=8, heads=2, dropout=0.0)
    model = get_method("regression").build(token_dim=6, n_genes=3, architecture=architecture)
    expression = torch.stack(
        [torch.full((20,), 5.0) + torch.randn(20) * 0.01, torch.randn(20) * 3, torch.zeros(20)], 1
    )
    get_method("regression").prepare(model, expression)
    assert torch.allclose(model.target_mean, expression.mean(0))
    assert model.target_scale[2] == 1  # a constant gene keeps unit scale, no division by zero
    tokens = torch.randn(20, 4, 6)
    # The loss is computed on standardised genes; the prediction is back in expression units.
    standard = model.standardised(tokens)
    assert torch.allclose(model.regress(tokens), standard * model.target_scale + model.target_mean)
    target = (expression - model.target_mean) / model.target_scale
    assert float(model.losses(tokens, expression)["loss"]) == pytest.approx(
        float(((standard - target) ** 2).mean()), rel=1e-5
    )
    # A state saved before targets were standardised loads with mean 0 and scale 1.
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("target_")}
    fresh = RegressionModel(token_dim=6, n_genes=3, architecture=architecture)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.target_mean, torch.zeros(3)) and torch.equal(fresh.target_scale, torch.ones(3))


def test_token_summaries_keep_what_the_models_read():
    from sthist.data import summarise_tokens

    torch.manual_seed(0)
    raw = torch.randn(5, 49, 6) * 3 + 1  # a 7 × 7 grid
    summary = summarise_tokens(raw, 3)
    assert summary.shape == (5, 10, 6)  # 3 × 3 regional means, then the balancing token
    torch.testing.assert_close(summary[:, :9], pool_token_grid(raw, 3))
    torch.testing.assert_close(summary.mean(dim=1), raw.mean(dim=1))  # every average of tokens unchanged
    torch.testing.assert_close(summarise_tokens(raw, 1), raw.mean(dim=1, keepdim=True))
    assert summarise_tokens(raw, None) is raw
    assert summarise_tokens(raw, 7) is raw  # a grid no larger than the summary's
    assert summarise_tokens(torch.randn(2, 12, 6), 3).shape == (2, 12, 6)  # not a square grid
    half = summarise_tokens(raw.half(), 3)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float().mean(dim=1), raw.mean(dim=1), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("reconstruction", [True, False])
def test_models_score_summaries_as_every_token(reconstruction):
    """Losses, embeddings and the reconstruction branch's regions are those of the raw tokens."""
    from sthist.data import add_context, summarise_tokens

    torch.manual_seed(0)
    architecture = ArchitectureConfig(embedding_dim=16, heads=2, reconstruction_grid=3)
    model = ContrastiveModel(
        token_dim=6, n_genes=5, architecture=architecture, branches=reconstruction
    ).eval()
    raw = torch.randn(8, 1, 49, 6)
    centres = np.c_[np.arange(8) * 100.0, np.zeros(8)]
    expression = torch.rand(8, 5)
    full = add_context(raw, centres, 250.0)[:, 0]
    summary = add_context(summarise_tokens(raw[:, 0], 3)[:, None], centres, 250.0)[:, 0]
    assert summary.shape == (8, 11, 6)
    for tokens in (summary, torch.cat([summarise_tokens(raw[:, 0], 1), full[:, -1:]], dim=1)):
        torch.testing.assert_close(model.image_embedding(tokens), model.image_embedding(full))
    seen = []
    if reconstruction:
        model.reconstruction.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    losses = []
    for tokens in (full, summary):
        torch.manual_seed(1)
        losses.append(model.losses(tokens, expression))
    for name in losses[0]:
        torch.testing.assert_close(losses[0][name], losses[1][name])
    if reconstruction:
        assert seen[0].shape == (8, 9, 16)
        torch.testing.assert_close(seen[0], seen[1])
    layered = ContrastiveModel(
        token_dim=6, n_genes=5, architecture=ArchitectureConfig(embedding_dim=16, heads=2, token_layers=1),
        branches=reconstruction,
    )  # fmt: skip
    assert layered.token_grid is None  # token layers read every token


@pytest.mark.parametrize("self_attention", [True, False])
def test_attend_is_multihead_attention(self_attention):
    """Same outputs, dropout draws and gradients as torch's module, which keeps the weights."""
    from torch import nn

    from sthist.models._modules import attend

    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, dropout=0.3, batch_first=True)
    query = torch.randn(5, 9, 16, requires_grad=True)
    memory = query if self_attention else torch.randn(5, 8, 16)
    for training in (False, True):
        attention.train(training)
        torch.manual_seed(1)
        expected = attention(query, memory, memory, need_weights=False)[0]
        torch.manual_seed(1)
        result = attend(attention, query, memory)
        torch.testing.assert_close(result, expected)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), query)
        (grad,) = torch.autograd.grad(result.square().sum(), query)
        torch.testing.assert_close(grad, expected_grad)
    torch.manual_seed(1)
    assert not torch.allclose(attend(attention, query, memory), attention.eval()(query, memory, memory)[0])


def test_cmrcnet_decoder_is_trained_on_standardised_expression_and_blended_with_retrieval():
    from sthist.models import get_method

    torch.manual_seed(0)
    cmrcnet = get_method("cmrcnet")
    architecture = ArchitectureConfig(embedding_dim=16, heads=2, dropout=0.0)
    module = cmrcnet.build(token_dim=6, n_genes=4, architecture=architecture)
    expression = torch.rand(12, 4) * torch.tensor([1.0, 3.0, 0.5, 0.0]) + 2
    cmrcnet.prepare(module, expression)
    assert torch.allclose(module.target_mean, expression.mean(0)) and module.target_scale[3] == 1
    tokens = torch.randn(12, 10, 6)
    torch.manual_seed(1)
    losses = module.losses(tokens, expression)
    assert set(losses) == {"loss", "contrastive", "reconstruction", "decoder"}
    weights = {"contrastive": 1.0, "reconstruction": architecture.reconstruction_weight,
               "decoder": architecture.decoder_weight}  # fmt: skip
    expected = sum(weight * torch.log1p(losses[name]) for name, weight in weights.items())
    torch.testing.assert_close(losses["loss"], expected)
    pooled = module.encode(tokens)[1]  # the decoder reads the pooled image representation
    target = (expression - module.target_mean) / module.target_scale
    torch.testing.assert_close(losses["decoder"], ((module.decoder(pooled) - target) ** 2).mean())
    module.eval()
    state = cmrcnet.reference(module, expression)
    retrieved, spread = cmrcnet.predict(module, state, tokens, 3, retrieval_weight=1.0)
    decoded, none = cmrcnet.predict(module, state, tokens, 3, retrieval_weight=0.0)
    torch.testing.assert_close(decoded, module.decode(module.encode(tokens)[1]))
    assert torch.isnan(none).all() and not torch.isnan(spread).any()
    blended, blended_spread = cmrcnet.predict(module, state, tokens, 3, retrieval_weight=0.25)
    torch.testing.assert_close(blended, 0.25 * retrieved + 0.75 * decoded)
    torch.testing.assert_close(blended_spread, spread)  # the spread stays that of the retrieved spots


@pytest.mark.parametrize(
    ("method", "weights", "parts"),
    [
        ("cmrcnet", {"decoder_weight": 0.0}, {"contrastive", "reconstruction"}),
        ("cmrcnet", {"reconstruction_weight": 0.0}, {"contrastive", "decoder"}),
        ("cmrcnet", {"reconstruction_weight": 0.0, "decoder_weight": 0.0}, {"contrastive"}),
        ("bleep", {"decoder_weight": 2.0}, {"contrastive"}),  # BLEEP has no branches, whatever the weights
    ],
)
def test_branch_weights_switch_cmrcnets_branches_off(method, weights, parts):
    from sthist.models import get_method

    torch.manual_seed(0)
    architecture = ArchitectureConfig(embedding_dim=16, heads=2, **weights)
    module = get_method(method).build(token_dim=6, n_genes=4, architecture=architecture)
    assert (module.decoder is None) == ("decoder" not in parts)
    assert (module.reconstruction is None) == ("reconstruction" not in parts)
    expression = torch.rand(8, 4)
    get_method(method).prepare(module, expression)
    losses = module.losses(torch.randn(8, 10, 6), expression)
    assert set(losses) == {"loss", *parts}
    if parts == {"contrastive"}:
        torch.testing.assert_close(losses["loss"], losses["contrastive"])  # BLEEP's loss, not log1p of it
    if module.decoder is None:  # retrieval alone, whatever share it is asked for
        module.eval()
        state = get_method(method).reference(module, expression)
        tokens = torch.randn(5, 10, 6)
        alone = get_method(method).predict(module, state, tokens, 2, retrieval_weight=1.0)
        torch.testing.assert_close(
            alone, get_method(method).predict(module, state, tokens, 2, retrieval_weight=0.0)
        )


@pytest.mark.parametrize(
    ("field", "value"), [("retrieval_weight", 1.5), ("retrieval_weight", -0.1), ("decoder_weight", -1.0),
                         ("reconstruction_weight", "high"), ("retrieval_weight", True)],
)  # fmt: skip
def test_branch_weights_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        ArchitectureConfig(**{field: value})

"""Pathology encoder presets, hub names and weights from the Hugging Face cache or local files, without real weights.

The real weights cannot be downloaded here: every preset's architecture is built at full size on the meta
device (shapes, parameter counts, prefix tokens, nothing computed) and at reduced depth with random weights,
whose state dict goes through the same loading code as the published files (local files in every layout,
a Hugging Face cache laid out as huggingface_hub lays it out, under a temporary HF_HOME).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket

import numpy as np
import pytest
import torch

import sthist
from sthist.models import create_encoder, get_backbone_config
from sthist.models._presets import PRESETS
from sthist.models._weights import MissingWeightsError, dinov2_transformers_to_timm

PRESET_NAMES = [preset.name for preset in PRESETS]


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home, offline, with every socket connection refused (no network call can pass)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sthist.settings, "offline", True)

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return home


def populate_hub_cache(home, hub_id: str, files: dict[str, bytes], commit: str = "0" * 40) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main → snapshots/<commit>/<file> → ../../blobs/<sha>."""
    repo = home / "hub" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repo / "blobs" / blob).write_bytes(content)
        os.symlink(f"../../blobs/{blob}", repo / "snapshots" / commit / name)


def state_bytes(model: torch.nn.Module, path) -> bytes:
    torch.save(model.state_dict(), path)
    return path.read_bytes()


def images(n: int = 1, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


# ----------------------------------------------------------------------------------------------- presets


def test_presets_carry_their_published_facts():
    facts = {
        "uni": ("MahmoodLab/uni", "vit_large_patch16_224", 1024, 1, True),
        "uni2_h": ("MahmoodLab/UNI2-h", "vit_giant_patch14_224", 1536, 9, True),
        "h_optimus_0": ("bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", 1536, 5, False),
        "h_optimus_1": ("bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", 1536, 5, True),
        "virchow2": ("paige-ai/Virchow2", "vit_huge_patch14_224", 1280, 5, True),
        "prov_gigapath": ("prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2", 1536, 1, True),
        "phikon_v2": ("owkin/phikon-v2", "vit_large_patch16_224", 1024, 1, False),
    }
    assert set(facts) == set(PRESET_NAMES) <= set(sthist.models.available_backbones())
    for name, (hub_id, architecture, width, prefix, gated) in facts.items():
        config = get_backbone_config(name)
        assert (config.hub_id, config.architecture, config.embed_dim) == (hub_id, architecture, width)
        assert (config.prefix_tokens, config.gated, config.input_size) == (prefix, gated, 224)
        assert config.input_size * config.microns_per_pixel == sthist.models.PatchConfig.size_um == 112
        assert config.licence and config.display_name
        # timm's hub names (both spellings, any case) reach the preset.
        assert get_backbone_config(f"hf-hub:{hub_id}") is config
        assert get_backbone_config(f"hf_hub:{hub_id.upper()}") is config
    optimus = get_backbone_config("h_optimus_0")
    assert (optimus.mean, optimus.std) == ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
    assert get_backbone_config("uni").mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_size_architecture_of_each_preset(name):
    """Built at full size on the meta device: parameter count, width and exactly the patch-grid tokens."""
    config = get_backbone_config(name)
    with torch.device("meta"):
        model = config.build(False)
        tokens = sthist.models.ImageEncoder(config, model)(torch.empty(2, 3, 224, 224, dtype=torch.uint8))
    assert sum(p.numel() for p in model.parameters()) == config.parameters
    assert model.num_prefix_tokens == config.prefix_tokens and model.num_features == config.embed_dim
    grid = 224 // model.patch_embed.patch_size[0]
    assert tuple(tokens.shape) == (2, grid * grid, config.embed_dim)


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("uni", "bin"),
        ("uni2_h", "safetensors"),
        ("h_optimus_0", "state_dict"),
        ("h_optimus_1", "model_prefix"),
        ("virchow2", "pth"),
        ("prov_gigapath", "module_prefix"),
    ],
)
def test_reduced_preset_round_trips_through_a_local_file(name, layout, tmp_path):
    """A random reduced-depth preset, saved in one of the layouts users hold, loads back with identical outputs."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_encoder(name, pretrained=False, depth=1).eval()
    state = source.model.state_dict()
    if layout == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        path = tmp_path / f"weights.{'pth' if layout == 'pth' else 'bin'}"
        wrapped = {
            "bin": state,
            "pth": state,
            "state_dict": {"state_dict": state, "epoch": 3},
            "model_prefix": {f"model.{k}": v for k, v in state.items()},
            "module_prefix": {"model": {f"module.{k}": v for k, v in state.items()}},
        }[layout]
        torch.save(wrapped, path)
    loaded = create_encoder(name, pretrained=str(path), depth=1).eval()
    batch = images()
    with torch.no_grad():
        expected, got = source(batch), loaded(batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grid = 224 // source.model.patch_embed.patch_size[0]
    assert got.shape == (1, grid * grid, source.config.embed_dim)
    identity = sthist.models._backbones.weights_identity(loaded.config, str(path), 0)
    assert identity == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_prefix_tokens_are_dropped_to_the_patch_grid():
    """A ViT with a class token and 4 registers yields exactly its 4 × 4 patch tokens, in grid order."""
    entry = sthist.models.timm_backbone(
        "registers_test", architecture="vit_small_patch14_reg4_dinov2", input_size=56,
        model_kwargs={"img_size": 56, "depth": 1, "embed_dim": 48, "num_heads": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = sthist.models.ImageEncoder(entry, entry.build(False)).eval()
    assert encoder.prefix_tokens == 5
    batch = images(2, 56)
    with torch.no_grad():
        tokens = encoder(batch)
        everything = encoder.model.forward_features((batch.float() - encoder.mean) / encoder.std)
    assert tokens.shape == (2, 16, 48) and everything.shape == (2, 21, 48)
    torch.testing.assert_close(tokens, everything[:, 5:])


def test_normalisation_is_applied_as_declared():
    torch.manual_seed(0)
    encoder = create_encoder("h_optimus_0", pretrained=False, depth=1).eval()
    mean = torch.tensor((0.707223, 0.578729, 0.703617)).view(1, 3, 1, 1)
    std = torch.tensor((0.211883, 0.230117, 0.177517)).view(1, 3, 1, 1)
    batch = images()
    with torch.no_grad():
        by_hand = encoder.model.forward_features((batch.float() / 255 - mean) / std)[:, 5:]
        torch.testing.assert_close(encoder(batch), by_hand, rtol=1e-4, atol=1e-4)
        imagenet = encoder.model.forward_features((batch.float() / 255 - 0.45) / 0.226)[:, 5:]
        assert not torch.allclose(encoder(batch), imagenet, atol=1e-2)


def test_weights_that_do_not_fit_are_reported_in_one_line(tmp_path):
    import timm

    # UNI without its layer scale (init_values omitted), as a plain vit_large would be saved.
    plain = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, depth=1)
    path = tmp_path / "plain.bin"
    torch.save(plain.state_dict(), path)
    with pytest.raises(ValueError) as error:
        create_encoder("uni", pretrained=str(path), depth=1)
    message = str(error.value)
    assert "\n" not in message and "2 missing (blocks.0.ls1.gamma, blocks.0.ls2.gamma)" in message
    assert "init_values" in message
    # Registers the file lacks, and a position embedding of another grid.
    registers = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, depth=1, init_values=1e-5, img_size=256
    )
    torch.save({"state_dict": registers.state_dict()}, path)
    with pytest.raises(
        ValueError, match=r"1 of another shape \(pos_embed: file \(1, 257, 1024\), model \(1, 197, 1024\)\)"
    ):
        create_encoder("uni", pretrained=str(path), depth=1)
    with pytest.raises(TypeError, match="takes no model keyword arguments"):
        create_encoder("tiny", pretrained=False, depth=1)


def dinov2_reference(state: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' Dinov2Model forward written out from its published source, on its own state dict keys."""
    functional = torch.nn.functional
    width = state["embeddings.cls_token"].shape[-1]
    weight = state["embeddings.patch_embeddings.projection.weight"]
    x = functional.conv2d(
        pixels, weight, state["embeddings.patch_embeddings.projection.bias"], stride=weight.shape[-1]
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["embeddings.cls_token"].expand(len(x), -1, -1), x], dim=1)
    x = x + state["embeddings.position_embeddings"]
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        p = f"encoder.layer.{i}."

        def norm(h, name, p=p):
            return functional.layer_norm(
                h, (width,), state[p + name + ".weight"], state[p + name + ".bias"], 1e-6
            )

        def linear(h, name, p=p):
            return functional.linear(h, state[p + name + ".weight"], state[p + name + ".bias"])

        h = norm(x, "norm1")
        q, k, v = (
            linear(h, f"attention.attention.{n}").view(len(h), -1, heads, width // heads).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        attention = torch.softmax(q @ k.transpose(-1, -2) * (width // heads) ** -0.5, dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(len(h), -1, width)
        x = x + linear(attention, "attention.output.dense") * state[p + "layer_scale1.lambda1"]
        h = linear(functional.gelu(linear(norm(x, "norm2"), "mlp.fc1")), "mlp.fc2")
        x = x + h * state[p + "layer_scale2.lambda1"]
    return functional.layer_norm(x, (width,), state["layernorm.weight"], state["layernorm.bias"], 1e-6)


def to_transformers_dinov2(state: dict) -> dict:
    """timm ViT weights in transformers' Dinov2Model layout (the inverse of what sthist maps), with a mask token."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in blocks:
        b, p = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{kind}"].chunk(3)
            out |= {p + f"attention.attention.query.{kind}": q, p + f"attention.attention.key.{kind}": k}
            out[p + f"attention.attention.value.{kind}"] = v
            for timm_name, hf_name in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.output.dense"),
                                       ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):  # fmt: skip
                out[p + f"{hf_name}.{kind}"] = state[b + f"{timm_name}.{kind}"]
        out[p + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        out[p + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
    return out


def test_phikon_v2_transformers_weights_are_mapped_onto_timm(tmp_path):
    """Weights in transformers' DINOv2 layout load into the timm ViT-L/16 and compute what Dinov2Model computes."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_encoder("phikon_v2", pretrained=False, depth=2).eval()
    with torch.no_grad():  # layer scales away from their initial 1e-5, so that the blocks matter
        for name, parameter in source.model.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.0)
    published = to_transformers_dinov2(source.model.state_dict())
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in published.items()}, path)
    loaded = create_encoder("phikon_v2", pretrained=str(path), depth=2).eval()
    batch = images()
    with torch.no_grad():
        tokens = loaded(batch)
        reference = dinov2_reference(
            published, (batch.float() / 255 - loaded.mean / 255) / (loaded.std / 255), heads=16
        )
    assert tokens.shape == (1, 196, 1024)
    torch.testing.assert_close(tokens, reference[:, 1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens, source(batch), rtol=0, atol=0)
    # A register-token checkpoint is not silently mapped.
    with pytest.raises(ValueError, match="lacks"):
        dinov2_transformers_to_timm({"encoder.layer.0.attention.attention.query.weight": torch.zeros(2, 2)})


# ----------------------------------------------------------------------------------- Hugging Face cache


def test_hub_weights_come_from_the_cache_offline_without_network(hf_home, tmp_path):
    torch.manual_seed(0)
    source = create_encoder("uni", pretrained=False, depth=1).eval()
    content = state_bytes(source.model, tmp_path / "pytorch_model.bin")
    populate_hub_cache(hf_home, "MahmoodLab/uni", {"pytorch_model.bin": content, "config.json": b"{}"})
    for name in ("uni", "hf-hub:MahmoodLab/uni"):
        encoder = create_encoder(name, depth=1).eval()
        with torch.no_grad():
            torch.testing.assert_close(encoder(images()), source(images()), rtol=0, atol=0)
    identity = sthist.models._backbones.weights_identity(get_backbone_config("uni"), True, 0)
    assert identity == f"sha256:{hashlib.sha256(content).hexdigest()}"


def test_missing_hub_weights_say_how_to_download_them(hf_home):
    with pytest.raises(MissingWeightsError) as error:
        create_encoder("uni2_h", depth=1)
    message = str(error.value)
    assert "\n" not in message and "MahmoodLab/UNI2-h" in message and "gated" in message
    assert (
        "hf download MahmoodLab/UNI2-h" in message and "huggingface-cli download MahmoodLab/UNI2-h" in message
    )
    assert str(hf_home / "hub") in message and "pretrained=<local weights file>" in message
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    with pytest.raises(MissingWeightsError, match="H-optimus-0 .*not gated"):
        create_encoder("h_optimus_0", depth=1)
    # A populated cache of another repository, or one without a weights file, does not count.
    populate_hub_cache(hf_home, "MahmoodLab/UNI2-h", {"README.md": b"gated"})
    with pytest.raises(MissingWeightsError, match="are not in the Hugging Face cache"):
        create_encoder("hf-hub:MahmoodLab/UNI2-h", depth=1)
    # Random weights need no file; an unknown hub name needs its timm config.json.
    assert create_encoder("uni2_h", pretrained=False, depth=1).embed_dim == 1536
    with pytest.raises(MissingWeightsError, match="timm config.json of hf-hub:someone/else"):
        create_encoder("hf-hub:someone/else")


def test_any_hub_name_is_built_from_its_cached_timm_config(hf_home, tmp_path):
    import timm
    from safetensors.torch import save_file

    arguments = {
        "img_size": 56,
        "depth": 1,
        "embed_dim": 48,
        "num_heads": 2,
        "reg_tokens": 2,
        "init_values": 1e-5,
    }
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, **arguments).eval()
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    config = {
        "architecture": "vit_small_patch14_reg4_dinov2",
        "num_classes": 0,
        "model_args": arguments,
        "pretrained_cfg": {
            "input_size": [3, 56, 56],
            "mean": [0.6, 0.5, 0.7],
            "std": [0.2, 0.2, 0.2],
            "license": "mit",
        },
    }
    populate_hub_cache(
        hf_home,
        "lab/tiny-path",
        {"config.json": json.dumps(config).encode(), "model.safetensors": weights.read_bytes()},
    )
    encoder = create_encoder("hf-hub:lab/tiny-path").eval()
    assert (encoder.config.input_size, encoder.config.mean, encoder.config.licence) == (
        56,
        (0.6, 0.5, 0.7),
        "mit",
    )
    assert (encoder.config.prefix_tokens, encoder.embed_dim) == (3, 48)
    batch = images(1, 56)
    with torch.no_grad():
        expected = source.forward_features(
            (batch.float() / 255 - torch.tensor([0.6, 0.5, 0.7]).view(1, 3, 1, 1)) / 0.2
        )
        torch.testing.assert_close(encoder(batch), expected[:, 3:], rtol=1e-5, atol=1e-5)
    # Model keyword arguments pass through over the published ones.
    assert len(create_encoder("hf-hub:lab/tiny-path", pretrained=False, depth=2).model.blocks) == 2


def test_plain_timm_names_read_the_cache_offline(hf_home, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    with pytest.raises(MissingWeightsError, match=r"timm/resnet10t.c3_in1k.*settings.offline is True"):
        create_encoder("resnet10t")
    populate_hub_cache(hf_home, "timm/resnet10t.c3_in1k", {"model.safetensors": weights.read_bytes()})
    encoder = create_encoder("resnet10t").eval()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[name], tensor)


def test_fit_on_a_registered_hub_encoder_records_its_checksum(hf_home, tmp_path, toy):
    """A user's own entry (timm_backbone + register_backbone): fit, save, load and predict offline from the cache."""
    entry = sthist.models.timm_backbone(
        "test_hub_vit", architecture="vit_small_patch16_224", hub_id="test-lab/path-vit", input_size=32,
        model_kwargs={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2,
                      "reg_tokens": 2, "init_values": 1e-5},
        microns_per_pixel=2.0, embed_dim=32, prefix_tokens=3, mean=(0.6, 0.5, 0.7), std=(0.2, 0.2, 0.2),
    )  # fmt: skip
    sthist.models.register_backbone(entry)
    try:
        torch.manual_seed(0)
        content = state_bytes(entry.build(False), tmp_path / "pytorch_model.bin")
        populate_hub_cache(hf_home, "test-lab/path-vit", {"pytorch_model.bin": content})
        train = {k: toy[k] for k in ("toy0",)}
        model = sthist.tl.fit(train, method="ridge", backbone="test_hub_vit", patch_size_um=64)
        assert model.config.backbone.weights_identity == f"sha256:{hashlib.sha256(content).hexdigest()}"
        assert model.config.backbone.mean == [0.6, 0.5, 0.7] and model.config.token_dim == 32
        with pytest.warns(
            UserWarning, match=r"trained on 32 px patches at 2 µm/px \(64 µm\); patch_size_um=112"
        ):
            sthist.models.SthistModel(train, method="ridge", backbone="test_hub_vit", patch_size_um=112)
        predicted, _ = sthist.tl.predict(toy["toy1"], model, inplace=False)
        model.save(tmp_path / "model")
        again, _ = sthist.tl.predict(toy["toy1"], sthist.models.load(tmp_path / "model"), inplace=False)
        np.testing.assert_allclose(again.to_numpy(), predicted.to_numpy(), rtol=1e-5, atol=1e-6)
    finally:
        sthist.models._backbones._REGISTRY.pop("test_hub_vit")


def test_declared_sizes_are_checked_against_the_built_model():
    entry = sthist.models.timm_backbone(
        "wrong_width", architecture="vit_small_patch16_224", embed_dim=64, input_size=32,
        model_kwargs={"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2},
    )  # fmt: skip
    sthist.models.register_backbone(entry)
    try:
        with pytest.raises(
            ValueError, match="declared with embedding size 64, but its architecture builds 32"
        ):
            create_encoder("wrong_width", pretrained=False)
    finally:
        sthist.models._backbones._REGISTRY.pop("wrong_width")


@pytest.mark.slow
def test_largest_preset_at_full_size_round_trips_through_a_local_file(tmp_path):
    """Prov-GigaPath (1.13 B parameters) built with random weights, saved, read back through the file path."""
    config = get_backbone_config("prov_gigapath")
    assert config.parameters == max(preset.parameters for preset in PRESETS)
    torch.manual_seed(0)
    source = create_encoder("prov_gigapath", pretrained=False).eval()
    batch = images()
    with torch.no_grad():
        expected = source(batch)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"model": source.model.state_dict()}, path)
    del source
    loaded = create_encoder("prov_gigapath", pretrained=str(path)).eval()
    with torch.no_grad():
        got = loaded(batch)
    assert got.shape == (1, 196, 1536)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert dataclasses.replace(loaded.config).parameters == sum(p.numel() for p in loaded.model.parameters())

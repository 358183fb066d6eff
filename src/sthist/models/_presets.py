"""Pathology foundation encoders as registry entries: hub id, timm architecture and arguments, normalisation.

Each entry says how its published weights are built with timm (the architecture and the keyword arguments
its authors pass to ``timm.create_model``), what it expects (224 px patches at 0.5 µm/px: sthist's default
112 µm patch; its mean and std), what it gives (class and register tokens, dropped; the width of its
patch tokens), its licence and whether downloading it is gated. The weights are read from the Hugging Face
cache (``hf download <hub id>`` once, on a machine with internet) or from a local file; ``hf-hub:<hub id>``
names the same entry. ``docs/encoders.md`` lists them with how each was verified.

CONCH is not an entry: its published embedding is the attention-pooled output of a CoCa model built by its
own ``conch`` package (open_clip), not a timm model's patch tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sthist.models._backbones import register_backbone, timm_backbone

#: H-optimus-0 and -1: mean and std of their training tiles.
H_OPTIMUS_MEAN, H_OPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
#: H-optimus-0 and -1 share their architecture (ViT-g/14 with 4 registers), normalisation and size.
_H_OPTIMUS: dict[str, Any] = {
    "architecture": "vit_giant_patch14_reg4_dinov2",
    "model_kwargs": {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
    "mean": H_OPTIMUS_MEAN,
    "std": H_OPTIMUS_STD,
    "embed_dim": 1536,
    "prefix_tokens": 5,
    "parameters": 1_134_774_272,
}
#: Resolution (µm/px) every entry was trained at: 20× magnification.
MICRONS_PER_PIXEL = 0.5

#: DINOv2's ViT-g/14 feed-forward: SwiGLU with 2 · 4096 hidden units (timm's packed layout).
_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}

PRESETS = [
    timm_backbone(
        "uni",
        display_name="UNI",
        hub_id="MahmoodLab/uni",
        architecture="vit_large_patch16_224",
        model_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        embed_dim=1024,
        prefix_tokens=1,
        parameters=303_350_784,
        licence="CC-BY-NC-ND-4.0 (non-commercial academic research)",
        gated=True,
    ),
    timm_backbone(
        "uni2_h",
        display_name="UNI2-h",
        hub_id="MahmoodLab/UNI2-h",
        architecture="vit_giant_patch14_224",
        model_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        embed_dim=1536,
        prefix_tokens=9,
        parameters=681_394_176,
        licence="CC-BY-NC-ND-4.0 (non-commercial academic research)",
        gated=True,
    ),
    timm_backbone(
        "h_optimus_0",
        display_name="H-optimus-0",
        hub_id="bioptimus/H-optimus-0",
        **_H_OPTIMUS,
        licence="Apache-2.0",
        gated=False,
    ),
    timm_backbone(
        "h_optimus_1",
        display_name="H-optimus-1",
        hub_id="bioptimus/H-optimus-1",
        **_H_OPTIMUS,
        licence="Bioptimus terms (see its model card)",
        gated=True,
    ),
    timm_backbone(
        "virchow2",
        display_name="Virchow2",
        hub_id="paige-ai/Virchow2",
        architecture="vit_huge_patch14_224",
        model_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "reg_tokens": 4,
            "global_pool": "",
            "dynamic_img_size": True,
            **_SWIGLU,
        },
        embed_dim=1280,
        prefix_tokens=5,
        parameters=631_239_424,
        licence="CC-BY-NC-ND-4.0 (non-commercial)",
        gated=True,
    ),
    timm_backbone(
        "prov_gigapath",
        display_name="Prov-GigaPath",
        hub_id="prov-gigapath/prov-gigapath",
        architecture="vit_giant_patch14_dinov2",
        model_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5},
        embed_dim=1536,
        prefix_tokens=1,
        parameters=1_134_953_984,
        licence="Apache-2.0 (gated: contact details shared with the authors)",
        gated=True,
    ),
    timm_backbone(
        "phikon_v2",
        display_name="Phikon-v2",
        hub_id="owkin/phikon-v2",
        # Published for transformers (Dinov2Model, ViT-L/16, no registers): its weights are mapped onto timm's
        # ViT-L/16 with layer scale when loaded (sthist.models._weights.dinov2_transformers_to_timm).
        architecture="vit_large_patch16_224",
        model_kwargs={"img_size": 224, "init_values": 1e-5},
        embed_dim=1024,
        prefix_tokens=1,
        parameters=303_350_784,
        licence="Owkin non-commercial licence (see its model card)",
        gated=False,
    ),
]

for _preset in PRESETS:
    register_backbone(dataclasses.replace(_preset, microns_per_pixel=MICRONS_PER_PIXEL))

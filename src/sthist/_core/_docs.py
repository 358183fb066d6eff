"""Parameter descriptions shared by the public functions, written once (``{name}`` in a docstring)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: Each entry is inserted where a docstring says ``{name}`` (at 4 spaces of indentation, inside Parameters).
SHARED_PARAMETERS = {
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
        Boolean ``obs`` column selecting the spots to use (e.g. ``'sthist_pass_qc'`` from
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
    """Fill ``{name}`` placeholders of ``function``'s docstring from :data:`SHARED_PARAMETERS`.

    Only known names are replaced, so other braces in a docstring stay as they are.
    """
    if function.__doc__:
        function.__doc__ = _PLACEHOLDER.sub(lambda match: SHARED_PARAMETERS[match.group(1)], function.__doc__)
    return function

"""Spot-centred H&E patches paired with expression, as a torch dataset over one or many sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import sparse

from sthist._constants import DEFAULT_COORDINATE_SYSTEM, Key
from sthist._core._checks import boolean_column
from sthist._core._config import PatchConfig
from sthist._core._section import PatchGeometry, resolve_sections
from sthist._core._stain import StainStats, hed_jitter, normalise
from sthist._settings import settings
from sthist.data._readers import LAZY_TILE_PX, InMemoryLevel, LazyLevel

if TYPE_CHECKING:
    pass


def dihedral(patch: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``transform % 4`` quarter turns, then a flip if ``transform >= 4``."""
    if not 0 <= transform < 8:
        raise ValueError(f"transform must be in 0..7, got {transform}.")
    out = np.rot90(patch, k=transform % 4, axes=(0, 1))
    if transform >= 4:
        out = out[:, ::-1]
    return out


def resampling_weights(
    start: torch.Tensor, stop: torch.Tensor, length: torch.Tensor, size: int, padded: int
) -> torch.Tensor:
    """Weights (B, size, padded) that resample pixels [start, stop) of rows of ``length`` pixels to ``size``.

    ``start``, ``stop`` and ``length`` hold one value per crop (B,), and the weights are computed on their
    device. Bilinear (a triangle filter), widened by the scale when shrinking so that every input pixel counts
    (antialiasing), each output pixel's weights normalised to sum to one: the filter PIL's ``BILINEAR`` resize
    applies with ``box=``, so that ``rows @ crop @ columns.T`` gives :meth:`SpotPatchDataset.patch`'s pixels up
    to rounding (PIL rounds to 8 bits between its two passes). Columns from ``length`` to ``padded`` are zero,
    for crops padded to one shape. Positions are computed in float64, as PIL does, and the weights returned
    in float32.
    """
    start, stop, length = (v.double()[:, None] for v in (start, stop, length))
    scale = (stop - start) / size
    support = scale.clamp(min=1.0)  # the triangle's half-width in input pixels
    centres = (
        start + (torch.arange(size, device=start.device, dtype=torch.float64) + 0.5) * scale
    )  # (B, size)
    # The input pixels each output pixel reads, as PIL rounds them: [first, last), clipped to the row.
    first = torch.trunc(centres - support + 0.5).clamp(min=0)[..., None]
    last = torch.minimum(torch.trunc(centres + support + 0.5), length)[..., None]
    pixels = torch.arange(padded, device=start.device, dtype=torch.float64)
    weights = (1 - ((pixels - centres[..., None] + 0.5) / support[..., None]).abs()).clamp(min=0)
    weights = weights * ((pixels >= first) & (pixels < last))
    total = weights.sum(dim=-1, keepdim=True)
    return (weights / torch.where(total > 0, total, 1)).float()


def resample(crops: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample a batch of crops (B, 3, H, W; uint8) to (B, 3, size, size) uint8, on the crops' device.

    ``boxes`` (B, 6) holds each crop's patch box in it and the crop's own extent within the padded batch:
    x0, y0, x1, y1, height, width. Two batched matrix products with :func:`resampling_weights`, rounded back
    to 8 bits.
    """
    height, width = crops.shape[-2:]
    rows = resampling_weights(boxes[:, 1], boxes[:, 3], boxes[:, 4], size, height)
    columns = resampling_weights(boxes[:, 0], boxes[:, 2], boxes[:, 5], size, width)
    pixels = torch.matmul(rows[:, None], crops.float())
    pixels = torch.matmul(pixels, columns[:, None].transpose(-1, -2))
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


def dihedral_tensor(patch: torch.Tensor, transform: int) -> torch.Tensor:
    """:func:`dihedral` of a channels-first patch tensor (3, px, px)."""
    out = torch.rot90(patch, k=transform % 4, dims=(1, 2))
    return torch.flip(out, dims=(2,)) if transform >= 4 else out


class _SectionPatches:
    """One section's patch geometry, pixel reader and expression, for the rows (spots) in use."""

    def __init__(
        self,
        name,
        geometry: PatchGeometry,
        reader,
        expression: np.ndarray | None,
        rows: np.ndarray,
        stain: StainStats | None = None,
    ):
        self.name = name
        self.stain = stain
        self.geometry = geometry
        self.reader = reader
        self.expression = expression
        self.rows = rows
        self.boxes = geometry.boxes[rows]
        # Integer read windows with one pixel of context for interpolation, clipped to the image.
        height, width = geometry.level.shape
        self.windows = np.c_[
            np.clip(np.floor(self.boxes[:, 1]) - 1, 0, height),
            np.clip(np.ceil(self.boxes[:, 3]) + 1, 0, height),
            np.clip(np.floor(self.boxes[:, 0]) - 1, 0, width),
            np.clip(np.ceil(self.boxes[:, 2]) + 1, 0, width),
        ].astype(np.int64)


class SpotPatchDataset(torch.utils.data.Dataset):
    """Spot-centred H&E patches of a fixed physical size, paired with the spots' expression.

    For each spot the square of ``patch_size_um`` µm centred on it is read from the best pyramid level
    (the coarsest level at least as fine as ``patch_size_um / patch_size_px`` µm/px) and resampled
    (bilinear, antialiased when shrinking) to ``patch_size_px`` pixels, so patches cover the same tissue
    area whatever each section's µm/px. Levels up to ``settings.in_memory_bytes`` are materialised and
    sliced with numpy; larger ones are read lazily by cached tiles.

    Items are dicts: ``image`` (uint8 tensor, 3 × px × px), ``expression`` (float32 tensor over ``genes``,
    from ``layer``; absent when ``genes`` is ``None``), ``section`` and ``spot`` (integer positions; see
    :attr:`spots` for names).

    Parameters
    ----------
    sdatas
        One section, a list, or a dict of section name → SpatialData (or sections already resolved,
        :class:`sthist._core._section.Section`).
    genes
        Gene panel; each must be in every section's table. ``None`` yields images only.
    layer
        Layer of the table with the expression to pair (``None`` for ``X``).
    patch_size_um
        Side of the patch in µm.
    patch_size_px
        Side of the resampled patch in pixels.
    augment
        Apply a random one of the 8 dihedral transforms (rotations by 90°, flips) to each item, and the stain
        jitter of ``hed_jitter``.
    hed_jitter
        Strength of the random stain (HED) jitter applied to augmented items (:func:`sthist._core._stain.hed_jitter`);
        0 turns it off.
    qc_column
        Boolean ``obs`` column selecting the spots to use (e.g. ``sthist_pass_qc`` from
        :func:`sthist.pp.qc_spots`); all spots by default.
    in_memory
        Force the in-memory (``True``) or lazy (``False``) path; by default chosen by level size.
    image_key, shapes_key, table_key, coordinate_system
        Element names and coordinate system (resolved per section when unambiguous).
    stain_reference
        Stain statistics to map every section onto (Reinhard normalisation, see
        :mod:`sthist._core._stain`); ``None`` leaves colours as scanned.
    """

    def __init__(
        self,
        sdatas,
        *,
        genes: Sequence[str] | None = None,
        layer: str | None = Key.layers.NORMALIZED,
        patch_size_um: float = PatchConfig.size_um,
        patch_size_px: int = PatchConfig.size_px,
        augment: bool = False,
        qc_column: str | None = None,
        in_memory: bool | None = None,
        image_key: str | None = None,
        shapes_key: str | None = None,
        table_key: str | None = None,
        coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
        stain_reference: StainStats | None = None,
        hed_jitter: float = 0.0,
    ):
        patch = PatchConfig(size_um=patch_size_um, size_px=patch_size_px)
        self.stain_reference = stain_reference
        self.patch_size_px = patch.size_px
        self.patch_size_um = patch.size_um
        self.augment = bool(augment)
        self.hed_jitter = float(hed_jitter)
        self.genes = None if genes is None else list(genes)
        self._sections: list[_SectionPatches] = []
        #: Each section's table (name → AnnData): where precomputed per-spot features are read.
        self.tables: dict = {}
        spot_frames = []
        sections = resolve_sections(
            sdatas,
            image_key=image_key,
            shapes_key=shapes_key,
            table_key=table_key,
            coordinate_system=coordinate_system,
        )
        for name, section in sections.items():
            geometry = section.patch_geometry(patch)
            table = section.table
            selected = np.ones(table.n_obs, dtype=bool)
            if qc_column is not None:
                if qc_column not in table.obs:
                    raise KeyError(
                        f"Section {name!r} has no obs column {qc_column!r}"
                        + (
                            " (run `sthist.pp.qc_spots(sdata)` first)."
                            if qc_column == Key.obs.QC_PASS
                            else "."
                        )
                    )
                selected = boolean_column(table, qc_column, section=name)
            outside = selected & ~geometry.inside
            if outside.any():
                raise ValueError(
                    f"Section {name!r}: the {patch_size_um:g} µm patches of {int(outside.sum())} spots leave the "
                    f"image (e.g. {table.obs_names[outside][:3].tolist()}). Flag them with "
                    f"`sthist.pp.qc_spots(sdata)` and pass qc_column={Key.obs.QC_PASS!r}, or use a smaller patch."
                )
            rows = np.flatnonzero(selected)
            if len(rows) == 0:
                raise ValueError(
                    f"Section {name!r} has no spot to use (empty section or all spots filtered out)."
                )
            # Spatial order, tile by tile of a lazy reader, so that iterated in order each tile is read once.
            x, y = geometry.centres[rows, 0], geometry.centres[rows, 1]
            order = np.lexsort((x, x // LAZY_TILE_PX, y // LAZY_TILE_PX))
            rows = rows[order]
            expression = None
            if self.genes is not None:
                expression = _expression(table, self.genes, layer, name)[rows]
            level = geometry.level
            materialise = in_memory if in_memory is not None else level.nbytes <= settings.in_memory_bytes
            margin = int(np.ceil(max(geometry.crop_size) / 2)) + 2
            reader = InMemoryLevel(level) if materialise else LazyLevel(level, margin=margin)
            stain = section.stain if stain_reference is not None else None
            self._sections.append(_SectionPatches(name, geometry, reader, expression, rows, stain))
            self.tables[name] = table
            spot_frames.append(
                pd.DataFrame(
                    {
                        "section": name,
                        "obs_name": table.obs_names[rows],
                        "row": rows,
                        "spot": np.arange(len(rows)),
                    }
                )
            )
        self.spots = pd.concat(spot_frames, ignore_index=True)
        self.spots["section"] = pd.Categorical(
            self.spots["section"], categories=[s.name for s in self._sections]
        )
        self._offsets = np.cumsum([0] + [len(s.rows) for s in self._sections])

    @property
    def sections(self) -> list[str]:
        return [section.name for section in self._sections]

    @property
    def expression(self) -> np.ndarray | None:
        """Expression of all items in dataset order (items × genes), or ``None`` without a gene panel."""
        if self.genes is None:
            return None
        return np.concatenate([section.expression for section in self._sections])

    def geometry(self, section: str) -> PatchGeometry:
        """Patch geometry of one section."""
        return self._sections[self.sections.index(section)].geometry

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} spots")
        index = index % len(self)
        section = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return section, index - int(self._offsets[section])

    def view(self, index: int, view: int, jitter: float = 0.0, base: np.ndarray | None = None) -> np.ndarray:
        """View ``view`` (0-7) of item ``index`` as the fast path encodes it (px × px × 3, uint8).

        The dihedral transform ``view`` and, for ``view`` ≥ 1, a stain jitter of strength ``jitter`` drawn from
        a generator seeded by the spot's table row and the view, so that a section's views are the same in
        every dataset that holds it. ``base`` is the item's untransformed patch when already read.
        """
        patch = self.patch(index) if base is None else base
        if view:
            patch = np.ascontiguousarray(dihedral(patch, view))
            if jitter:
                section_index, spot = self._locate(index)
                row = int(self._sections[section_index].rows[spot])
                patch = hed_jitter(patch, jitter, np.random.default_rng((row, view)))
        return patch

    def crop(self, index: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The pixels read for item ``index`` (h × w × 3, uint8) and its patch's box in them: (x0, y0, x1, y1).

        The crop is the box widened to whole pixels plus one pixel of context, clipped to the image; the
        patch is the box resampled to ``patch_size_px`` (:meth:`patch`, or on a device, :func:`resample`).
        """
        section_index, spot = self._locate(index)
        section = self._sections[section_index]
        y0, y1, x0, x1 = section.windows[spot]
        bx0, by0, bx1, by1 = section.boxes[spot]
        return section.reader.read(y0, y1, x0, x1), (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)

    def crop_shape(self, indices) -> tuple[int, int]:
        """The largest (height, width) of the crops of items ``indices`` (:meth:`crop`)."""
        located = [self._locate(int(i)) for i in indices]
        windows = np.array([self._sections[section].windows[spot] for section, spot in located])
        return int((windows[:, 1] - windows[:, 0]).max()), int((windows[:, 3] - windows[:, 2]).max())

    def patch(self, index: int, transform: int = 0) -> np.ndarray:
        """The resampled patch of item ``index`` (px × px × 3, uint8), after dihedral ``transform`` (0-7)."""
        crop, box = self.crop(index)
        size = self.patch_size_px
        resized = Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR, box=box)
        patch = np.array(resized)  # writable, so torch can wrap it
        if self.stain_reference is not None:
            stain = self._sections[self._locate(index)[0]].stain
            if stain is not None:
                patch = normalise(patch, stain, self.stain_reference)
        return np.ascontiguousarray(dihedral(patch, transform)) if transform else patch

    def __getitem__(self, index: int) -> dict:
        section_index, spot = self._locate(index)
        transform = int(torch.randint(8, (1,)).item()) if self.augment else 0
        patch = self.patch(index, transform)
        if self.augment and self.hed_jitter:
            seed = int(torch.randint(2**62, (1,)).item())  # follows torch's seeding (and each worker's)
            patch = hed_jitter(patch, self.hed_jitter, np.random.default_rng(seed))
        item = {
            "image": torch.from_numpy(patch).permute(2, 0, 1),
            "section": section_index,
            "spot": spot,
        }
        expression = self._sections[section_index].expression
        if expression is not None:
            item["expression"] = torch.from_numpy(expression[spot])
        return item


def _expression(table, genes: list[str], layer: str | None, name: str) -> np.ndarray:
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise KeyError(
            f"Section {name!r} lacks {len(missing)} of the requested genes: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}. Choose the panel with `sthist.pp.select_genes` over all sections."
        )
    if layer is not None and layer not in table.layers:
        raise KeyError(
            f"Section {name!r} has no layer {layer!r}"
            + (" (run `sthist.pp.normalize(table)` first)." if layer == Key.layers.NORMALIZED else ".")
        )
    matrix = table.X if layer is None else table.layers[layer]
    matrix = matrix[:, table.var_names.get_indexer(genes)]
    dense = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
    dense = dense.astype(np.float32)
    if not np.isfinite(dense).all():
        raise ValueError(f"Section {name!r}: the expression in layer {layer!r} has NaN or infinite values.")
    return dense

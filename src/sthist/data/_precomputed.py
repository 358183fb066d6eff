"""Per-spot features another tool computed (a pathology encoder run elsewhere), read from ``table.obsm``.

``tl.fit(..., backbone="obsm:<key>")`` trains on them instead of encoding patches: each spot's tokens are one
token, its row of ``table.obsm[key]``, which is what the methods that read a mean token (ridge, regression,
BLEEP, CMRCNet without token layers) see of a patch anyway. Which encoder computed the features is declared
in ``table.uns['sthist_features'][key]`` (a string such as ``'UNI (MahmoodLab/uni)'``); the model records it
and refuses sections whose features declare another.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sthist._constants import Key

#: ``table.uns`` entry mapping an ``obsm`` key of precomputed features to the encoder that computed them.
FEATURES_UNS_KEY = Key.uns.FEATURES
#: Identity recorded for features whose encoder no section declares.
UNDECLARED = "undeclared"


def declared_encoder(table, key: str) -> str | None:
    """The encoder ``table.uns['sthist_features'][key]`` declares for ``table.obsm[key]`` (``None``: none)."""
    record = table.uns.get(FEATURES_UNS_KEY)
    if not isinstance(record, Mapping) or key not in record:
        return None
    value = record[key]
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"table.uns[{FEATURES_UNS_KEY!r}][{key!r}] must name the encoder (a string), got {value!r}."
        )
    return value


class PrecomputedFeatures(torch.nn.Module):
    """Stands in for an image encoder: a spot's tokens are one token, its row of ``table.obsm[key]``.

    It has no weights and cannot encode pixels: fine-tuning and tile predictions need an image encoder.
    :meth:`bind` checks the training sections (every one has the features, of one width, declared by at
    most one encoder); :meth:`tokens` reads them for the spots of a :class:`SpotPatchDataset`.

    Parameters
    ----------
    key
        The ``obsm`` key of the features (spots × channels).
    config
        The backbone entry it stands for (``sthist.models.get_backbone_config('obsm:<key>')``).
    """

    def __init__(self, key: str, *, config: Any = None):
        super().__init__()
        self.key = key
        self.config: Any = config
        self.model = torch.nn.Module()  # nothing to save
        self.declared: str | None = None
        self._width: int | None = None if config is None else config.embed_dim

    @property
    def embed_dim(self) -> int:
        """Channels of the features (known once bound to sections or read)."""
        if self._width is None:
            raise ValueError(
                f"The width of table.obsm[{self.key!r}] is known once features are read (bind())."
            )
        return self._width

    def features(self, table, section) -> np.ndarray:
        """The features of every row of ``table`` (rows × channels, float32), checked for shape."""
        if self.key not in table.obsm:
            raise KeyError(
                f"Section {section!r} has no table.obsm[{self.key!r}] (it has {sorted(table.obsm)}): compute the "
                "features of its spots with the encoder of the training sections (tile predictions need an "
                "image-encoder backbone: features computed elsewhere exist per spot only)."
            )
        values = table.obsm[self.key]
        values = values.to_numpy() if hasattr(values, "to_numpy") else values
        values = values.toarray() if hasattr(values, "toarray") else values
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or len(values) != table.n_obs:
            raise ValueError(
                f"Section {section!r}: table.obsm[{self.key!r}] has shape {values.shape}; one row of features per "
                f"spot ({table.n_obs} × channels) is needed."
            )
        return values

    def bind(self, sections: Mapping) -> None:
        """Check the training ``sections`` (name → Section) and take the features' width and encoder from them."""
        widths, declared = {}, {}
        for name, section in sections.items():
            widths[name] = self.features(section.table, name).shape[1]
            declared[name] = declared_encoder(section.table, self.key)
        if len(set(widths.values())) > 1:
            raise ValueError(
                f"table.obsm[{self.key!r}] has {widths} channels across sections; features of one encoder have "
                "one width."
            )
        encoders = {value for value in declared.values() if value is not None}
        if len(encoders) > 1:
            raise ValueError(
                f"The sections declare table.obsm[{self.key!r}] as computed by different encoders ({declared}); "
                "train on features of one encoder."
            )
        if None in declared.values():
            warnings.warn(
                f"Sections {[n for n, d in declared.items() if d is None]} do not declare the encoder of "
                f"table.obsm[{self.key!r}]; set table.uns[{FEATURES_UNS_KEY!r}] = {{{self.key!r}: '<encoder>'}} so "
                "that the model can refuse features of another encoder.",
                UserWarning,
                stacklevel=4,
            )
        self._width = next(iter(widths.values()))
        self.declared = encoders.pop() if encoders else None

    def tokens(
        self,
        dataset,
        *,
        indices=None,
        views: int = 1,
        dtype: torch.dtype = torch.float16,
        identity: str | None = None,
    ) -> torch.Tensor:
        """The features of the spots of ``dataset`` as tokens: (spots, views, 1, channels).

        Every view is the same features (they were computed once, from the patch as it is). ``identity`` is the
        model's record of the encoder (``'obsm:<key>|<declared encoder>'``); a section whose features declare
        another encoder is refused, and one that declares none gets a warning.
        """
        tables = getattr(dataset, "tables", None)
        if tables is None:
            raise TypeError(
                f"Precomputed features are read per spot of a SpotPatchDataset, not from {type(dataset).__name__}; "
                "tile predictions and fine-tuning need an image encoder."
            )
        spots = dataset.spots if indices is None else dataset.spots.iloc[[int(i) for i in indices]]
        expected = self.declared if identity is None else identity.split("|", 1)[-1]
        expected = None if expected == UNDECLARED else expected
        out: np.ndarray | None = None
        rows = spots["row"].to_numpy()
        for name, positions in spots.groupby("section", observed=True).indices.items():
            table = tables[name]
            self._check_encoder(declared_encoder(table, self.key), expected, name)
            values = self.features(table, name)
            if self._width is not None and values.shape[1] != self._width:
                raise ValueError(
                    f"Section {name!r}: table.obsm[{self.key!r}] has {values.shape[1]} channels, the model reads "
                    f"{self._width}; these are features of another encoder."
                )
            self._width = values.shape[1]
            if out is None:
                out = np.empty((len(spots), values.shape[1]), dtype=np.float32)
            out[positions] = values[rows[positions]]
        if out is None:
            raise ValueError("No spot to read features for (empty dataset or indices).")
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise ValueError(
                f"table.obsm[{self.key!r}] has NaN or infinite features for {int(bad.sum())} spots (e.g. "
                f"{spots['obs_name'].to_numpy()[bad][:3].tolist()}); leave them out with a qc_column."
            )
        return torch.from_numpy(out).to(dtype)[:, None, None, :].expand(-1, views, -1, -1)

    def _check_encoder(self, found: str | None, expected: str | None, section) -> None:
        if found is not None and expected is not None and found != expected:
            raise ValueError(
                f"Section {section!r}: table.obsm[{self.key!r}] declares features of {found!r}, but the model was "
                f"trained on features of {expected!r}; compute them with the same encoder."
            )
        if (found is None) != (expected is None):  # both undeclared: warned when the model was fitted
            warnings.warn(
                f"Section {section!r}: whether table.obsm[{self.key!r}] comes from the encoder the model was trained "
                f"on cannot be checked (declare it in table.uns[{FEATURES_UNS_KEY!r}]).",
                UserWarning,
                stacklevel=5,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"This model reads precomputed features (table.obsm[{self.key!r}]), not pixels: fine-tuning, tile "
            "predictions and encoding patches need an image encoder backbone."
        )

"""Every key sthist reads or writes in a SpatialData object or AnnData table, defined once.

Keys are grouped by where they live (``Key.obs``, ``Key.obsm``, ``Key.uns``, ...). Names derived from a
user's key (the uncertainty beside a prediction, the table beside tiles, an evaluation's record) are built
here too, so that the writer and every reader agree. No other module spells an ``"sthist_…"`` literal
(``tests/test_constants.py`` checks it).
"""

from __future__ import annotations

#: Default coordinate system of images and spots.
DEFAULT_COORDINATE_SYSTEM = "global"
#: Genes whose cross-validated Pearson r falls below this are flagged as unreliable.
RELIABILITY_THRESHOLD = 0.1


class Key:
    """Keys of sthist's results and metadata, and the names derived from them."""

    class attrs:
        """``sdata.attrs[Key.attrs.ROOT]``: sthist's metadata about a SpatialData object."""

        ROOT = "sthist"
        #: µm per pixel, keyed by coordinate system name.
        MICRONS_PER_PIXEL = "microns_per_pixel"
        #: How the physical scale was obtained, keyed by coordinate system name.
        SCALE_SOURCE = "microns_per_pixel_source"
        #: Fraction of spots on tissue, measured when a dataset was loaded.
        REGISTRATION = "fraction_spots_on_tissue"
        #: Name of the section, and the patient it comes from (set by the dataset loaders).
        SECTION = "section"
        PATIENT = "patient"
        DATASET = "dataset"
        #: The image read when several are present and none is named (the Visium reader records the finest).
        IMAGE = "image_key"

    class layers:
        #: Written by :func:`sthist.pp.normalize` (log1p of counts normalised to ``target_sum``).
        NORMALIZED = "sthist_log1p"
        #: Spread of the retrieved spots, in the tiles table written by :func:`sthist.tl.predict_tiles`.
        UNCERTAINTY = "uncertainty"

    class obs:
        #: Written by :func:`sthist.pp.qc_spots`.
        QC_IN_IMAGE = "sthist_in_image"
        QC_ON_TISSUE = "sthist_on_tissue"
        QC_TISSUE_FRACTION = "sthist_tissue_fraction"
        QC_PASS = "sthist_pass_qc"
        #: Written by the dataset loaders.
        SECTION = "section"
        PATIENT = "patient"
        ARRAY_X = "array_x"
        ARRAY_Y = "array_y"
        LABEL = "label"
        #: Instance and region columns of the tables sthist builds (loaders, tiles).
        INSTANCE = "spot_id"
        REGION = "region"
        #: Fraction of a tile covered by the tissue mask (tiles table).
        TISSUE_FRACTION = "tissue_fraction"

    class obsm:
        #: Predictions written by :func:`sthist.tl.predict`.
        PREDICTION = "sthist_pred"
        #: Tile centres in the tiles table (scanpy's convention).
        SPATIAL = "spatial"

        @staticmethod
        def uncertainty(key: str) -> str:
            """``obsm`` key of the retrieval spread written beside the predictions under ``key``."""
            return f"{key}_uncertainty"

    class var:
        #: Per-gene cross-validated Pearson r and its flag, in the tiles table.
        RELIABILITY = "reliability"
        UNRELIABLE = "unreliable"

    class uns:
        #: Normalisation settings, keyed by layer.
        NORMALIZATION = "sthist_normalization"
        #: Encoder of each per-spot feature matrix in ``obsm`` computed by another tool (``{obsm_key: encoder}``).
        FEATURES = "sthist_features"
        #: Tile-level feature table each ``obsm`` feature matrix was read from (``{obsm_key: table name}``,
        #: :func:`sthist.pp.spot_features_from_tiles`); such tables are not a section's spots.
        FEATURE_SOURCES = "sthist_feature_sources"
        #: Settings of :func:`sthist.pp.qc_spots`.
        QC = "sthist_qc"
        #: Inside a prediction's provenance: the sthist version that wrote it.
        VERSION = "sthist_version"

        @staticmethod
        def evaluation(key: str) -> str:
            """``uns`` key of :func:`sthist.tl.evaluate`'s results for the predictions under ``key``."""
            return f"{key}_evaluation"

    class shapes:
        #: Tiles written by :func:`sthist.tl.predict_tiles`.
        TILES = "sthist_tiles"

    class tables:
        #: The table of the view :func:`sthist.tl.to_spatialdata` returns (predictions in ``X``).
        PREDICTIONS = "predictions"

        @staticmethod
        def tiles(key: str) -> str:
            """Name of the table annotating the tiles ``shapes[key]``."""
            return f"{key}_table"

    class checkpoint:
        #: Training history stored in Lightning checkpoints.
        HISTORY = "sthist_history"
        #: Metadata entry of a saved model's weights file holding the digest of its config.
        CONFIG_DIGEST = "sthist_config_sha256"

    @staticmethod
    def prediction(method: str) -> str:
        """``obsm`` key of one method's predictions when several are compared in one table."""
        return f"{Key.obsm.PREDICTION}_{method}"

"""Every key sthist writes into a SpatialData object or AnnData table, defined once."""

from __future__ import annotations

#: ``sdata.attrs[ATTRS_KEY]`` holds sthist's metadata about a SpatialData object (physical scale, provenance).
ATTRS_KEY = "sthist"
#: Inside ``sdata.attrs[ATTRS_KEY]``: µm per pixel, keyed by coordinate system name.
MICRONS_PER_PIXEL_KEY = "microns_per_pixel"
#: Inside ``sdata.attrs[ATTRS_KEY]``: how the physical scale was obtained, keyed by coordinate system name.
SCALE_SOURCE_KEY = "microns_per_pixel_source"
#: Inside ``sdata.attrs[ATTRS_KEY]``: fraction of spots on tissue, measured when a dataset was loaded.
REGISTRATION_KEY = "fraction_spots_on_tissue"

#: Default coordinate system of images and spots.
DEFAULT_COORDINATE_SYSTEM = "global"

#: Layer written by :func:`sthist.pp.normalize` (log1p of counts normalised to ``target_sum``).
NORMALIZED_LAYER = "sthist_log1p"
#: ``adata.uns`` key recording the normalisation choice.
NORMALIZATION_UNS_KEY = "sthist_normalization"
#: ``adata.uns`` key recording a gene panel chosen by :func:`sthist.pp.select_genes`.
PANEL_UNS_KEY = "sthist_gene_panel"

#: ``obs`` columns written by :func:`sthist.pp.qc_spots`.
QC_IN_IMAGE = "sthist_in_image"
QC_ON_TISSUE = "sthist_on_tissue"
QC_TISSUE_FRACTION = "sthist_tissue_fraction"
QC_PASS = "sthist_pass_qc"
QC_UNS_KEY = "sthist_qc"

#: ``obs`` columns written by the dataset loaders.
OBS_SECTION = "section"
OBS_PATIENT = "patient"
OBS_ARRAY_X = "array_x"
OBS_ARRAY_Y = "array_y"
OBS_LABEL = "label"

#: Instance and region columns of the tables that sthist's loaders build.
INSTANCE_KEY = "spot_id"
REGION_KEY = "region"

#: ``table.obsm`` / ``table.uns`` key written by :func:`sthist.tl.predict` (``_uncertainty`` appended for the spread).
PREDICTION_KEY = "sthist_pred"
#: Shapes and table written by :func:`sthist.tl.predict_tiles`.
TILES_KEY = "sthist_tiles"

"""Writers of 10x Genomics file formats for tests that build outputs in their exact layout."""

from __future__ import annotations

import h5py
import numpy as np
import scipy.sparse


def write_10x_h5(path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """A feature-barcode matrix (``matrix/`` group, CSC genes × barcodes) as Space Ranger and Xenium write it."""
    csc = scipy.sparse.csc_matrix(np.asarray(counts).T)
    with h5py.File(path, "w") as handle:
        matrix = handle.create_group("matrix")
        matrix["barcodes"] = np.array(barcodes, dtype="S")
        matrix["data"], matrix["indices"], matrix["indptr"] = csc.data, csc.indices, csc.indptr
        matrix["shape"] = np.array(csc.shape, dtype=np.int32)
        features = matrix.create_group("features")
        features["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        features["name"] = np.array(genes, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")

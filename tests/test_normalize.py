import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sthist


def _adata(matrix):
    return ad.AnnData(X=matrix, var={"gene": ["a", "b", "c"]})


@pytest.mark.parametrize("as_sparse", [False, True])
def test_normalize_values(as_sparse):
    counts = np.array([[1, 3, 0], [0, 0, 0], [10, 0, 10]])
    adata = _adata(sparse.csr_matrix(counts) if as_sparse else counts)
    sthist.pp.normalize(adata, target_sum=100)
    layer = adata.layers["sthist_log1p"]
    layer = layer.toarray() if sparse.issparse(layer) else layer
    expected = np.log1p(np.array([[25, 75, 0], [0, 0, 0], [50, 0, 50]], dtype=float))
    np.testing.assert_allclose(layer, expected, rtol=1e-6)
    assert adata.uns["sthist_normalization"]["sthist_log1p"]["target_sum"] == 100
    # The raw counts are left as they were.
    x = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
    np.testing.assert_array_equal(x, counts)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[1.0, np.nan, 0]]), "NaN"),
        (np.array([[1, -2, 0]]), "negative"),
        (np.array([[1.5, 2, 0]]), "non-integer"),
        (sparse.csr_matrix(np.array([[0.3, 2, 0]])), "non-integer"),
    ],
)
def test_normalize_refuses_non_counts(matrix, message):
    adata = _adata(matrix)
    with pytest.raises(ValueError, match=message):
        sthist.pp.normalize(adata)
    assert "sthist_log1p" not in adata.layers


def test_normalize_does_not_overwrite():
    adata = _adata(np.array([[1, 2, 3]]))
    adata.layers["sthist_log1p"] = np.zeros((1, 3))
    with pytest.raises(ValueError, match="exists already; pass overwrite=True"):
        sthist.pp.normalize(adata)
    np.testing.assert_array_equal(adata.layers["sthist_log1p"], 0)
    sthist.pp.normalize(adata, overwrite=True)
    assert adata.layers["sthist_log1p"].max() > 0


def test_normalize_not_inplace_returns_values_and_leaves_adata():
    adata = _adata(np.array([[1, 2, 3]]))
    result = sthist.pp.normalize(adata, inplace=False, target_sum=6)
    np.testing.assert_allclose(result, np.log1p([[1, 2, 3]]))
    assert "sthist_log1p" not in adata.layers and "sthist_normalization" not in adata.uns


def test_normalize_counts_layer():
    adata = _adata(np.zeros((1, 3)))
    with pytest.raises(KeyError, match="No layer 'counts'"):
        sthist.pp.normalize(adata, layer="counts")
    adata.layers["counts"] = np.array([[2, 2, 0]])
    sthist.pp.normalize(adata, layer="counts", target_sum=2)
    np.testing.assert_allclose(adata.layers["sthist_log1p"], np.log1p([[1, 1, 0]]))

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sthist


def _section(values, genes):
    adata = ad.AnnData(X=np.asarray(values, dtype=np.int64), var=pd.DataFrame(index=genes))
    adata.layers["sthist_log1p"] = np.asarray(values, dtype=np.float32)
    return adata


def test_heg_hvg_rank_over_shared_genes():
    one = _section([[5, 1, 0, 2, 9], [5, 3, 1, 2, 9], [5, 5, 0, 2, 9]], ["a", "b", "c", "d", "only_one"])
    two = _section([[4, 0, 1, 1], [4, 6, 1, 3], [4, 0, 0, 2]], ["d", "b", "c", "a"])
    heg = sthist.pp.select_genes([one, two], flavor="heg", n_top=3, min_detection=0.0)
    # means per section: a 5|2, b 3|2, c 1/3|2/3, d 2|4 → a 3.5, d 3, b 2.5
    assert heg == ["a", "d", "b"]
    hvg = sthist.pp.select_genes([one, two], flavor="hvg", n_top=2, min_detection=0.0)
    assert hvg[0] == "b"  # variance 4 and 12 per section
    assert "only_one" not in sthist.pp.select_genes([one, two], n_top=None, min_detection=0.0)


def test_detection_filter_applies_in_every_section():
    one = _section([[1, 0], [1, 0], [1, 1]], ["a", "b"])
    two = _section([[1, 9], [1, 9], [1, 9]], ["a", "b"])
    assert sthist.pp.select_genes([one, two], n_top=None, min_detection=0.5) == ["a"]
    with pytest.raises(ValueError, match="No gene is detected in at least 100%"):
        sthist.pp.select_genes([one, _section([[0, 9], [1, 0]], ["a", "b"])], n_top=None, min_detection=1.0)


def test_explicit_list_and_missing_genes():
    one = _section([[1, 2]], ["a", "b"])
    two = _section([[1, 2]], ["a", "c"])
    assert sthist.pp.select_genes([one, two], genes=["a"]) == ["a"]
    with pytest.raises(KeyError, match=r"not measured in section 1: \['b'\]"):
        sthist.pp.select_genes([one, two], genes=["a", "b"])
    with pytest.raises(ValueError, match="more than once"):
        sthist.pp.select_genes([one], genes=["a", "a"])


def test_missing_layer_and_empty_sections():
    bare = ad.AnnData(X=np.ones((2, 2)), var=pd.DataFrame(index=["a", "b"]))
    with pytest.raises(KeyError, match=r"no layer 'sthist_log1p'.*sthist.pp.normalize"):
        sthist.pp.select_genes([bare])
    with pytest.raises(ValueError, match="has no spots"):
        sthist.pp.select_genes([ad.AnnData(X=np.ones((0, 2)))])
    with pytest.raises(ValueError, match="No sections"):
        sthist.pp.select_genes([])
    with pytest.raises(ValueError, match="share no gene"):
        sthist.pp.select_genes([_section([[1]], ["a"]), _section([[1]], ["b"])])


def test_accepts_spatialdata_dict(toy):
    for sdata in toy.values():
        sthist.pp.normalize(sdata.tables["table"])
    panel = sthist.pp.select_genes(toy, n_top=5)
    assert len(panel) == 5 and len(set(panel)) == 5


def test_heg_plus_hvg_is_the_union_in_order():
    sections = sthist.datasets.toy(2, grid=5, n_genes=20, random_state=4)
    for sdata in sections.values():
        sthist.pp.normalize(sdata.tables["table"])
    heg = sthist.pp.select_genes(sections, flavor="heg", n_top=6)
    hvg = sthist.pp.select_genes(sections, flavor="hvg", n_top=6)
    union = sthist.pp.select_genes(sections, flavor="heg+hvg", n_top=6)
    assert union[:6] == heg and union[6:] == [g for g in hvg if g not in heg]
    with pytest.raises(ValueError, match="flavor must be 'heg', 'hvg' or 'heg\\+hvg'"):
        sthist.pp.select_genes(sections, flavor="top")


def test_exclude_technical_keeps_them_out_of_ranked_panels_only():
    genes = ["MT-CO1", "RPL13A", "MALAT1", "ERBB2", "KRT19", "MTOR"]
    # The technical genes are the most expressed and the most variable: they would top both rankings.
    values = [[90, 80, 70, 5, 3, 1], [10, 20, 30, 6, 1, 2], [50, 40, 60, 4, 2, 1]]
    one = _section(values, genes)
    ranked = sthist.pp.select_genes(one, flavor="heg+hvg", n_top=3, min_detection=0.0)
    assert set(ranked[:3]) == {"MT-CO1", "RPL13A", "MALAT1"}
    kept = sthist.pp.select_genes(one, flavor="heg+hvg", n_top=3, min_detection=0.0, exclude_technical=True)
    assert kept[:3] == ["ERBB2", "KRT19", "MTOR"]  # MTOR is not mitochondrial
    explicit = sthist.pp.select_genes(one, genes=["MT-CO1", "ERBB2"], exclude_technical=True)
    assert explicit == ["MT-CO1", "ERBB2"]  # an explicit list is kept as given
    with pytest.raises(ValueError, match="Every shared gene is technical"):
        sthist.pp.select_genes(_section(values, ["mt-Co1", "Rps6", "Malat1", "Neat1", "Rplp0", "RPSA"]),
                               n_top=None, min_detection=0.0, exclude_technical=True)  # fmt: skip


def test_fit_records_the_technical_exclusion(toy):
    model = sthist.models.SthistModel(toy, method="ridge", backbone="tiny", pretrained=False,
                                      patch_size_um=64, data={"exclude_technical": True})  # fmt: skip
    assert model.config.panel.exclude_technical is True
    assert model.setup_options()["data"].exclude_technical is True


def test_a_panel_of_every_detected_gene(toy):
    """n_top_genes=None: every gene detected in ≥ 10 % of the spots of each section; evaluation calls it 'panel'."""
    for sdata in toy.values():
        sthist.pp.normalize(sdata.tables["table"])
    detected = sthist.pp.select_genes(toy, n_top=None)
    model = sthist.models.SthistModel(toy, method="ridge", backbone="tiny", pretrained=False,
                                      patch_size_um=64, data={"n_top_genes": None})  # fmt: skip
    assert sorted(model.genes) == sorted(detected) and model.config.panel.n_top_genes is None
    assert len(model.genes) > len(sthist.models.SthistModel(
        toy, method="ridge", backbone="tiny", pretrained=False, patch_size_um=64, data={"n_top_genes": 3}
    ).genes)  # fmt: skip
    with pytest.raises(ValueError, match="n_top_genes"):
        sthist.models.SthistModel(
            toy, method="ridge", backbone="tiny", pretrained=False, data={"n_top_genes": 0}
        )
    from sthist.cli import build_parser

    parsed = build_parser().parse_args(["fit", "a.zarr", "--output", "m", "--n-top-genes", "all"])
    assert parsed.n_top_genes is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "a.zarr", "--output", "m", "--n-top-genes", "many"])


def test_gene_statistics_of_shared_genes_are_those_of_their_own_columns():
    # select_genes computes every gene's statistics and keeps the shared ones: the numbers of the columns alone.
    from scipy import sparse

    from sthist.pp._panel import _column_stats

    rng = np.random.default_rng(3)
    dense = rng.poisson(0.4, (60, 40)).astype(np.float32) * rng.random((60, 40), dtype=np.float32)
    columns = rng.permutation(40)[:25]
    for matrix in (dense, sparse.csr_matrix(dense)):
        for whole, alone in zip(_column_stats(matrix), _column_stats(matrix[:, columns]), strict=True):
            np.testing.assert_array_equal(whole[columns], alone)

import numpy as np

import sthist


def test_toy_is_deterministic_and_learnable():
    first = sthist.datasets.toy(1, grid=5, n_genes=8, random_state=3)["toy0"]
    second = sthist.datasets.toy(1, grid=5, n_genes=8, random_state=3)["toy0"]
    np.testing.assert_array_equal(first.tables["table"].X.toarray(), second.tables["table"].X.toarray())
    np.testing.assert_array_equal(
        np.asarray(first.images["he"]["scale0"]["image"]), np.asarray(second.images["he"]["scale0"]["image"])
    )
    assert first.attrs["sthist"]["dataset"] == "toy (synthetic)"


def test_toy_expression_follows_texture():
    sdata = sthist.datasets.toy(1, grid=10, n_genes=8, random_state=0)["toy0"]
    table = sdata.tables["table"]
    sthist.pp.normalize(table)
    expression = table.layers["sthist_log1p"].toarray()
    density = table.obs["density"].to_numpy()
    hue = table.obs["hue"].to_numpy()
    # The first quarter of the genes follows nucleus density, the second quarter stain hue.
    assert abs(np.corrcoef(expression[:, 0], density)[0, 1]) > 0.6
    assert abs(np.corrcoef(expression[:, 3], hue)[0, 1]) > 0.6
    # Nucleus density is visible in the image: darker patches where density is high.
    patches = sthist.data.SpotPatchDataset(sdata, patch_size_um=100, patch_size_px=32)
    darkness = np.array([255 - patches.patch(i).mean() for i in range(len(patches))])
    order = table.obs_names.get_indexer(patches.spots["obs_name"])
    assert np.corrcoef(darkness, density[order])[0, 1] > 0.6

"""The real training path at small scale: HER2ST sections, frozen EfficientNet-Lite0, fast path."""

import numpy as np
import pandas as pd
import pytest

import sthist
from sthist._core._metrics import gene_pearson, top_genes

pytestmark = pytest.mark.realdata


def test_fit_predict_her2st_fast_path(her2st_images, tmp_path):
    sthist.settings.progress = False
    train = {name: her2st_images[name] for name in ["C2", "C3"]}
    test = her2st_images["C4"]
    model = sthist.tl.fit(
        train,
        method="cmrcnet",
        max_epochs=8,
        training={"views": 1, "learning_rate": 1e-3},
        k=20,
        data={"n_top_genes": 100},
    )
    assert model.config.backbone.weights_identity.startswith("sha256:")
    assert model.config.microns_per_pixel["C2"] == pytest.approx(0.688, abs=0.01)
    assert model.config.reference_spots == 187 + 180
    losses = [record["loss"] for record in model.history]
    assert losses[-1] < losses[0]
    prediction, uncertainty = sthist.tl.predict(test, model, inplace=False)
    table = test.tables["table"]
    normalised = sthist.pp.normalize(table, inplace=False)  # the shared fixture stays as it is
    columns = table.var_names.get_indexer(model.genes)
    observed = pd.DataFrame(normalised[:, columns].toarray(), index=table.obs_names, columns=model.genes)
    r = gene_pearson(observed, prediction)
    # A held-out section of a patient seen in training: clearly positive on the most variable genes.
    assert r[top_genes(observed, 50, "hvg")].mean() > 0.1
    assert np.isfinite(prediction.to_numpy()).all() and (uncertainty.to_numpy() > 0).mean() > 0.9
    model.save(tmp_path / "m")
    again, _ = sthist.tl.predict(test, sthist.models.load(tmp_path / "m"), inplace=False)
    np.testing.assert_array_equal(again.to_numpy(), prediction.to_numpy())

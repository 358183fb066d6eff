"""The model users hold: it sets up its data contract, trains itself and predicts from tokens.

Three layers, as in scvi-tools: plain torch modules (``_modules``), the Lightning training plan
(``_training``), and this user-facing object, which owns the data contract (gene panel, normalisation,
patch geometry, backbone) and delegates what differs between methods to a strategy object (``_methods``).
Its set-up helpers live in ``_setup``, its typed configuration in ``_config`` and persistence in
``_save_load``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sthist._core._checks import gene_list
from sthist._core._config import (
    DEFAULT_BACKBONE,
    ArchitectureConfig,
    DataConfig,
    PatchConfig,
    TrainingConfig,
)
from sthist._core._docs import doc_params
from sthist._core._section import resolve_sections
from sthist._core._stain import StainStats
from sthist._core._timing import stage
from sthist._logging import logger
from sthist._settings import apply_runtime_settings
from sthist.models._backbones import encoder_for_sections, weights_identity
from sthist.models._config import (
    BackboneRecord,
    CenteringRecord,
    ModelConfig,
    NormalisationRecord,
    PanelRecord,
    ReliabilityRecord,
)
from sthist.models._methods import get_method
from sthist.models._save_load import FORMAT_VERSION, load, save_model, versions
from sthist.models._setup import (
    WithTargets,
    check_variation,
    gene_panel,
    normalised_sections,
    prediction_defaults,
    recentre,
    spot_centres_um,
    stain_record,
)


@doc_params
class SthistModel:
    """A model that predicts expression from H&E patches: CMRCNet or a baseline, with its data contract.

    Creating it sets up the data contract from the training sections: gene panel, normalisation, patch
    geometry, image encoder and the method's trainable modules; :meth:`train` trains it (frozen encoder on
    cached tokens by default, or end to end) and builds the retrieval bank. A trained model predicts with
    :func:`sthist.tl.predict`, is written with :meth:`save` and read with :meth:`load`. Most users call
    :func:`sthist.tl.fit`, which does both steps.

    Parameters
    ----------
    sections
        {fit_sections}
    {fit_method}
    {fit_genes}
    {fit_backbone}
    {fit_patch}
    qc_column
        Boolean ``obs`` column selecting training spots (e.g. ``sthist_pass_qc``).
    {fit_k}
    {random_state}
    architecture
        Sizes of the trainable modules, spatial context, ridge strength (:class:`ArchitectureConfig` or a dict
        of its fields).
    data
        Panel size, normalised layer, centring and stain normalisation (:class:`DataConfig` or a dict).

    Examples
    --------
    >>> import sthist
    >>> sections = sthist.datasets.toy()
    >>> model = sthist.models.SthistModel(sections, backbone="tiny", patch_size_um=64, k=5)
    >>> model.train(sthist.models.TrainingConfig(max_epochs=2, batch_size=32, views=1))  # doctest: +ELLIPSIS
    SthistModel(method='cmrcnet', ...)
    """

    def __init__(
        self,
        sections,
        *,
        method: str = "cmrcnet",
        genes: list[str] | None = None,
        backbone: str | None = None,
        pretrained: bool | str = True,
        patch_size_um: float = PatchConfig.size_um,
        qc_column: str | None = None,
        k: int | None = None,
        smooth_um: float | None = None,
        random_state: int | None = None,
        architecture: ArchitectureConfig | dict | None = None,
        data: DataConfig | dict | None = None,
    ):
        import lightning as L

        from sthist._settings import settings
        from sthist.data import SpotPatchDataset

        random_state = settings.random_state if random_state is None else random_state
        self._method = get_method(method)
        k, smooth_um = prediction_defaults(method, k, smooth_um)
        architecture = ArchitectureConfig.coerce(architecture, "architecture")
        data = DataConfig.coerce(data, "data")
        genes = gene_list(genes)
        with stage("resolve sections"):
            resolved = resolve_sections(sections)
        with stage("normalise"):
            resolved, normalisation = normalised_sections(resolved, data.layer, data.target_sum)
        with stage("gene panel"):
            panel = gene_panel(resolved, data, genes)
        L.seed_everything(random_state, workers=True, verbose=False)
        backbone = backbone or DEFAULT_BACKBONE
        with stage("build encoder"):
            encoder = encoder_for_sections(
                backbone, pretrained=pretrained, sections=resolved, patch_size_um=patch_size_um
            )
        patch = PatchConfig(size_um=patch_size_um, size_px=encoder.config.input_size)
        stain, reference = stain_record(resolved) if data.stain_normalization else (None, None)
        with stage("patch geometry"):
            self._dataset: SpotPatchDataset | None = SpotPatchDataset(
                resolved, genes=panel, layer=data.layer, patch_size_um=patch.size_um, patch_size_px=patch.size_px,
                qc_column=qc_column, stain_reference=reference,
            )  # fmt: skip
        self._centres_um = spot_centres_um(resolved, self._dataset)
        if self._method.retrieval and k > len(self._dataset):
            raise ValueError(f"k={k} exceeds the {len(self._dataset)} training spots; choose a smaller k.")
        check_variation(self._dataset, panel)
        self.config = ModelConfig(
            format_version=FORMAT_VERSION,
            versions=versions(),
            method=self._method.name,
            genes=list(panel),
            panel=PanelRecord(data.n_top_genes, data.exclude_technical, explicit=genes is not None),
            normalization=NormalisationRecord.from_dict({"layer": data.layer, **normalisation}),
            patch=patch,
            microns_per_pixel={name: section.microns_per_pixel for name, section in resolved.items()},
            image_microns_per_pixel={
                name: float(max(self._dataset.geometry(name).level_microns_per_pixel)) for name in resolved
            },
            backbone=BackboneRecord(
                name=backbone,
                weights=encoder.config.weights,
                licence=encoder.config.licence,
                weights_identity=weights_identity(encoder.config, pretrained, random_state),
                mean=list(encoder.config.mean),
                std=list(encoder.config.std),
            ),
            architecture=architecture,
            token_dim=encoder.embed_dim,
            n_genes=len(panel),
            centering=CenteringRecord(data.center_expression, data.center_tokens),
            stain=stain,
            k=k,
            smooth_um=smooth_um,
            qc_column=qc_column,
            seed=int(random_state),
            training_sections={
                name: int((self._dataset.spots["section"] == name).sum()) for name in resolved
            },
            reference_spots=int(len(self._dataset)) if self._method.retrieval else None,
        )
        self.encoder = encoder.eval()
        self.module = self._method.build(
            token_dim=encoder.embed_dim, n_genes=len(panel), architecture=architecture
        )
        self.tensors: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    @classmethod
    def _restore(cls, config: ModelConfig, encoder, module, tensors, history) -> SthistModel:
        """A trained model from its parts (as :meth:`load` reads them), without training sections."""
        model = cls.__new__(cls)
        model._method = get_method(config.method)
        model._dataset = None
        model.config = config
        model.encoder = encoder.eval()
        model.module = None if module is None else module.eval()
        model.tensors = tensors
        model.history = history or []
        return model

    def train(
        self,
        training: TrainingConfig | dict | None = None,
        *,
        accelerator: str = "auto",
        devices: int | str | list = "auto",
        strategy: str = "auto",
        num_nodes: int = 1,
        precision: str | None = None,
        checkpoint_dir: str | None = None,
        resume_from: str | None = None,
        token_cache=None,
    ) -> SthistModel:
        """Train the model on the sections it was set up with; returns the model itself.

        Parameters
        ----------
        training
            Optimisation settings (:class:`TrainingConfig` or a dict of its fields: epochs, batch size,
            learning-rate schedule, dihedral views of the fast path, fine-tuning).
        {trainer}
        token_cache
            A :class:`sthist.data.TokenCache` shared between fits (fast path), so that sections are encoded
            once.

        Returns
        -------
        The trained model; ``history`` holds the mean losses of each epoch and ``config.training`` the
        settings.
        """
        training = TrainingConfig.coerce(training, "training")
        dataset = self._training_dataset()
        self._check_training(training, dataset)
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        expression = torch.from_numpy(dataset.expression)
        sections = torch.from_numpy(dataset.spots["section"].cat.codes.to_numpy(dtype="int64"))
        if self.centering["expression"]:
            expression = recentre(expression, sections)
        apply_runtime_settings()
        device = "cuda" if gpu else "cpu"
        if not self._method.trainable:
            self._fit_closed_form(expression, sections, device=device, token_cache=token_cache)
        else:
            trainer = {
                "accelerator": accelerator, "devices": devices, "strategy": strategy, "num_nodes": num_nodes,
                "precision": precision, "checkpoint_dir": checkpoint_dir, "resume_from": resume_from,
            }  # fmt: skip
            self._fit_trainable(training, expression, sections, gpu=gpu, token_cache=token_cache, **trainer)
        self.config.training = training
        self.config.backbone = replace(self.config.backbone, fine_tuned=training.fine_tune)
        logger.info(
            "fitted %s on %d spots from %d sections",
            self.method,
            len(dataset),
            len(self.config.training_sections),
        )
        return self

    def _training_dataset(self):
        if self._dataset is None:
            raise ValueError("This model was loaded from disk; it has no training sections to train on.")
        return self._dataset

    def _check_training(self, training: TrainingConfig, dataset) -> None:
        """Refuse settings this model cannot train with; fine-tuning drops spatial context (with a warning)."""
        if training.fine_tune and not self._method.trainable:
            raise ValueError(
                f"The {self.method} baseline uses frozen features; fine_tune=True does not apply."
            )
        if len(dataset) < training.batch_size and self._method.trainable:
            raise ValueError(
                f"Only {len(dataset)} training spots for batch_size={training.batch_size}; lower batch_size "
                "or add sections."
            )
        if training.fine_tune and self.architecture.context_um is not None:
            warnings.warn(
                "context_um adds the neighbourhood's mean token from the cached tokens of the fast path; "
                "fine-tuning trains the model without spatial context (recorded as context_um=None).",
                UserWarning,
                stacklevel=3,
            )
            self.config.architecture = replace(self.config.architecture, context_um=None)
            self.module = self._method.build(
                token_dim=self.config.token_dim, n_genes=len(self.genes), architecture=self.architecture
            )
        if training.fine_tune and self.centering["tokens"]:
            raise ValueError(
                "center_tokens applies to the frozen-encoder fast path (cached tokens); it cannot be combined "
                "with fine_tune=True."
            )

    def _training_tokens(
        self, sections, *, views: int, jitter: float, device: str, token_cache
    ) -> torch.Tensor:
        """Tokens of the training spots (frozen encoder), centred and with their context token when asked."""
        from sthist.data import tokens_of

        tokens = tokens_of(
            self._training_dataset(), self.encoder, identity=self.config.backbone.identity, views=views, device=device,
            token_cache=token_cache, jitter=jitter, grid=self.token_grid(training=True),
        )  # fmt: skip
        return self._with_context(self._centred_tokens(tokens, sections), sections)

    def _fit_closed_form(self, expression, sections, *, device: str, token_cache) -> None:
        """The ridge baseline: frozen features of one view, solved in closed form."""
        with stage("encoding"):
            tokens = self._training_tokens(
                sections, views=1, jitter=0.0, device=device, token_cache=token_cache
            )
        with stage("training"):
            self.tensors.update(
                self._method.fit_closed_form(
                    tokens[:, 0], expression, architecture=self.architecture, groups=sections.numpy()
                )
            )

    def _fit_trainable(self, training, expression, sections, *, gpu: bool, token_cache, **trainer) -> None:
        """Train the method's module (on cached tokens, or end to end), then build its retrieval bank."""
        from sthist.data import TokenDataset
        from sthist.models._training import fit_module

        module, dataset = self.module, self._training_dataset()
        if module is None:
            raise ValueError(f"The {self.method} method has no trainable module.")
        self._method.prepare(module, expression)
        train_data: torch.utils.data.Dataset
        if training.fine_tune:
            dataset.augment, dataset.hed_jitter = True, training.hed_jitter
            # Patches from the dataset, targets as prepared here (centred when asked).
            train_data = WithTargets(dataset, expression) if self.centering["expression"] else dataset
        else:
            device = "cuda" if gpu else "cpu"
            with stage("encoding"):
                tokens = self._training_tokens(
                    sections,
                    views=training.views,
                    jitter=training.hed_jitter,
                    device=device,
                    token_cache=token_cache,
                )
            train_data = TokenDataset(tokens, expression, augment=True)
        try:
            with stage("training"):
                self.history = fit_module(
                    module, self.encoder if training.fine_tune else None, train_data, training,
                    random_state=self.config.seed, gpu=gpu, **trainer,
                )  # fmt: skip
        finally:
            dataset.augment, dataset.hed_jitter = False, 0.0
        self.module = module.cpu().eval()
        self.encoder = self.encoder.cpu().eval()
        with stage("retrieval bank"):
            self.tensors.update(self._method.reference(self.module, expression))

    def token_grid(self, *, training: bool) -> int | None:
        """How much of each patch's tokens this model reads (:func:`sthist.data.summarise_tokens`).

        Without token layers, prediction reads only the mean token (``1``); training reads the regional
        summary the reconstruction branch needs, and the closed-form ridge the mean token. ``None``: every
        token.
        """
        from sthist.models._modules import token_grid

        if training and self._method.trainable:
            return token_grid(self.architecture)
        return None if self.architecture.token_layers else 1

    def _with_context(self, tokens: torch.Tensor, sections: torch.Tensor) -> torch.Tensor:
        """Training tokens with each spot's context token appended (``context_um``), within its section."""
        from sthist.data import add_context

        radius = self.architecture.context_um
        if radius is None:
            return tokens
        return add_context(tokens, self._centres_um, radius, groups=sections.numpy())

    def _centred_tokens(self, tokens: torch.Tensor, sections: torch.Tensor) -> torch.Tensor:
        """Training tokens with each section's mean channel vector replaced by the training mean."""
        if not self.centering["tokens"]:
            return tokens
        channels = tokens.float().mean(dim=(1, 2))  # (spots, channels): mean over views and token positions
        overall = channels.mean(dim=0)
        self.tensors = {**self.tensors, "tokens.mean": overall}
        shift = torch.zeros_like(channels)
        for code in sections.unique():
            members = sections == code
            shift[members] = overall - channels[members].mean(dim=0)
        return (tokens.float() + shift[:, None, None, :]).to(tokens.dtype)

    def section_token_shift(self, section_mean: torch.Tensor | None) -> torch.Tensor | None:
        """What to add to the tokens of a section whose mean channel vector is ``section_mean``.

        ``None`` when the model does not centre tokens. Centring needs the section's mean over its spots
        (or tiles): :func:`sthist.tl.predict` passes the mean over all predicted spots.
        """
        if not self.centering["tokens"]:
            return None
        if section_mean is None:
            raise ValueError("This model centres tokens per section; pass the section's mean channel vector.")
        return self.tensors["tokens.mean"] - section_mean.float()

    @property
    def centering(self) -> dict[str, bool]:
        """Whether expression and tokens are centred per section (``{'expression': …, 'tokens': …}``)."""
        return self.config.centering.to_dict()

    @property
    def stain_reference(self) -> StainStats | None:
        """Stain statistics every section is mapped onto before encoding (``None``: no stain normalisation)."""
        record = self.config.stain
        return None if not record else StainStats.from_dict(record["reference"])

    @property
    def is_trained(self) -> bool:
        return self.config.training is not None

    @property
    def method(self) -> str:
        return self._method.name

    @property
    def retrieval(self) -> bool:
        """Whether predictions average retrieved reference spots (``k`` applies; a spread is reported)."""
        return self._method.retrieval

    @property
    def genes(self) -> list[str]:
        return list(self.config.genes)

    @property
    def k(self) -> int:
        return int(self.config.k)

    @property
    def retrieval_weight(self) -> float | None:
        """Share of retrieval in the predictions (1: retrieval alone; the rest is the expression decoder's).

        ``None`` for methods that do not retrieve (regression, ridge).
        """
        if not self.retrieval:
            return None
        if getattr(self.module, "decoder", None) is None:
            return 1.0
        return float(self.architecture.retrieval_weight)

    @property
    def smooth_um(self) -> float:
        """Radius (µm) over which :func:`sthist.tl.predict` smooths this model's predictions by default (0: none)."""
        return float(self.config.smooth_um)

    @property
    def architecture(self) -> ArchitectureConfig:
        return self.config.architecture

    @property
    def training(self) -> TrainingConfig | None:
        return self.config.training

    @property
    def patch(self) -> PatchConfig:
        return self.config.patch

    @property
    def unreliable_genes(self) -> list[str]:
        """Genes whose cross-validated Pearson r is below the recorded threshold (empty if never assessed)."""
        reliability = self.config.reliability
        return [] if reliability is None else reliability.unreliable(self.genes)

    def record_reliability(self, reliability, *, threshold: float, groups: str | None = None) -> None:
        """Keep a cross-validated Pearson r per gene (NaN: undefined) and the threshold below which genes are flagged.

        :func:`sthist.tl.gene_reliability` computes it; predictions then report the genes below ``threshold``.
        """
        genes = {str(g): (None if np.isnan(r) else float(r)) for g, r in dict(reliability).items()}
        unknown = sorted(set(genes) - set(self.genes))
        if unknown:
            raise ValueError(f"Reliability names genes the model does not predict: {unknown[:10]}.")
        self.config.reliability = ReliabilityRecord(genes=genes, threshold=float(threshold), groups=groups)

    def setup_options(self) -> dict:
        """Keyword arguments that set up a model like this one on other sections (cross-validation folds)."""
        config = self.config
        return {
            "method": self.method,
            "genes": self.genes,
            "backbone": config.backbone.name,
            "patch_size_um": config.patch.size_um,
            "qc_column": config.qc_column,
            "k": self.k,
            "smooth_um": self.smooth_um,
            "random_state": config.seed,
            "architecture": self.architecture,
            "data": DataConfig(
                exclude_technical=config.panel.exclude_technical,
                layer=config.normalization.layer,
                target_sum=config.normalization.target_sum or DataConfig.target_sum,
                center_expression=config.centering.expression,
                center_tokens=config.centering.tokens,
                stain_normalization=config.stain is not None,
            ),
        }

    def __repr__(self) -> str:
        return (
            f"SthistModel(method={self.method!r}, backbone={self.config.backbone.name!r}, "
            f"genes={len(self.genes)}, reference spots={self.config.reference_spots}, "
            f"patch={self.config.patch.size_um:g} µm{'' if self.is_trained else ', not trained'})"
        )

    @torch.inference_mode()
    def predict_tokens(
        self,
        tokens: torch.Tensor,
        *,
        k: int | None = None,
        retrieval_weight: float | None = None,
        section_mean: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expression (spots × genes, log1p units) and its spread over the retrieved neighbours from tokens.

        Retrieval methods average the expression of the ``k`` reference spots whose expression embeddings
        are most similar (cosine) to the patch's image embedding; the spread is their standard deviation.
        Regression and ridge give no spread (NaN). CMRCNet blends retrieval with its expression decoder,
        ``retrieval_weight`` (the architecture's by default) being the share of retrieval. ``section_mean``
        is the mean channel vector of the section's tokens, needed when the model centres tokens per section.
        """
        if not self.is_trained:
            raise ValueError("The model is not trained yet; call model.train() first.")
        shift = self.section_token_shift(section_mean)
        if shift is not None:
            tokens = tokens.float() + shift
        return self._method.predict(
            self.module,
            self.tensors,
            tokens,
            self.k if k is None else int(k),
            retrieval_weight=self.blend_weight(retrieval_weight),
        )

    def blend_weight(self, weight: float | None = None) -> float:
        """The share of retrieval to predict with: the model's own, or ``weight`` checked against the model.

        Raises ``ValueError`` for a weight outside [0, 1] or one given to a model without a decoder.
        """
        checked = self.retrieval_weight if weight is None else check_retrieval_weight(self, weight)
        return 1.0 if checked is None else checked

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (refuses to replace them unless asked).

        The model is written completely into a new folder beside ``folder`` and then swapped in by renames, so
        a failed or killed save leaves the previous model loadable (:meth:`load` and the next save put it
        back if the swap was cut half-way). Other files in ``folder`` are kept. The config's digest is kept
        in the weights file and the weights' checksum in the config, so neither can change unnoticed. Files
        are readable as the process's umask allows (like any file it writes). In a multi-process (DDP) run
        only the first process writes.
        """
        return save_model(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | Path) -> SthistModel:
        """Read a model saved by :meth:`save`, validating format, files, checksum and contents."""
        return load(folder)


def check_retrieval_weight(model, weight) -> float | None:
    """Refuse a ``retrieval_weight`` outside [0, 1] or one given for a model that has no decoder to blend with."""
    if weight is None:
        return None
    number = isinstance(weight, (int, float, np.number)) and not isinstance(weight, bool)
    if not number or not 0 <= weight <= 1:
        raise ValueError(f"retrieval_weight must be a number in [0, 1], got {weight!r}.")
    if getattr(model.module, "decoder", None) is None:
        raise ValueError(
            f"retrieval_weight blends retrieval with CMRCNet's expression decoder; this {model.method} model has "
            "no decoder (fit method='cmrcnet' with decoder_weight > 0)."
        )
    return float(weight)

"""The model users hold: it sets up its data contract, trains itself, predicts from tokens, saves and loads.

Three layers, as in scvi-tools: plain torch modules (``_modules``), the Lightning training plan
(``_training``), and this user-facing object, which owns the data contract (gene panel, normalisation,
patch geometry, backbone) and delegates what differs between methods to a strategy object (``_methods``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sthist._constants import RELIABILITY_THRESHOLD, Key
from sthist._core._checks import check_positive_integer, check_smoothing, gene_list
from sthist._core._config import (
    DEFAULT_BACKBONE,
    N_TOP_GENES,
    TARGET_SUM,
    ArchitectureConfig,
    PatchConfig,
    TrainingConfig,
    default_k,
    default_smooth_um,
)
from sthist._core._docs import doc_params
from sthist._core._section import Section, resolve_sections
from sthist._core._stain import StainStats
from sthist._core._timing import stage
from sthist._logging import logger
from sthist._settings import apply_runtime_settings
from sthist.models._backbones import create_encoder, file_sha256, weights_identity
from sthist.models._methods import get_method

#: Version of the saved-model folder layout; loading refuses newer formats and converts older ones.
FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Metadata entry of the weights file holding the digest of the config (format 3 on).
CONFIG_DIGEST = Key.checkpoint.CONFIG_DIGEST
_SAVING, _REPLACED = ".sthist-saving-", ".sthist-replaced-"


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
    architecture
        Sizes of the trainable modules (:class:`ArchitectureConfig`).
    {fit_patch}
    {fit_k}
    qc_column
        Boolean ``obs`` column selecting training spots (e.g. ``sthist_pass_qc``).
    {fit_layer}
    {centering}
    {random_state}

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
        n_top_genes: int | None = N_TOP_GENES,
        exclude_technical: bool = False,
        backbone: str | None = None,
        pretrained: bool | str = True,
        architecture: ArchitectureConfig | None = None,
        patch_size_um: float = PatchConfig.size_um,
        k: int | None = None,
        smooth_um: float | None = None,
        qc_column: str | None = None,
        layer: str = Key.layers.NORMALIZED,
        target_sum: float = TARGET_SUM,
        center_expression: bool = False,
        center_tokens: bool = False,
        stain_normalization: bool = False,
        random_state: int | None = None,
    ):
        import lightning as L

        from sthist._settings import settings
        from sthist.data import SpotPatchDataset

        if random_state is None:
            random_state = settings.random_state

        self._method = get_method(method)
        k = default_k(method) if k is None else k
        check_positive_integer(k, "k")
        smooth_um = default_smooth_um(method) if smooth_um is None else smooth_um
        check_smoothing(smooth_um)
        if n_top_genes is not None:
            check_positive_integer(n_top_genes, "n_top_genes")
        genes = gene_list(genes)
        explicit_panel = genes is not None
        architecture = architecture or ArchitectureConfig()
        with stage("resolve sections"):
            resolved = resolve_sections(sections)
        with stage("normalise"):
            resolved, normalisation = _normalised_sections(resolved, layer, target_sum)
        with stage("gene panel"):
            genes = _panel(resolved, layer, n_top_genes, genes, exclude_technical)

        L.seed_everything(random_state, workers=True, verbose=False)
        backbone = backbone or DEFAULT_BACKBONE
        with stage("build encoder"):
            encoder = create_encoder(backbone, pretrained=pretrained)
        patch = PatchConfig(size_um=patch_size_um, size_px=encoder.config.input_size)
        stain, reference = None, None
        if stain_normalization:
            stain = {name: section.stain for name, section in resolved.items()}
            reference = StainStats.average(list(stain.values()))
        with stage("patch geometry"):
            self._dataset: SpotPatchDataset | None = SpotPatchDataset(
                resolved, genes=genes, layer=layer, patch_size_um=patch.size_um, patch_size_px=patch.size_px,
                qc_column=qc_column, stain_reference=reference,
            )  # fmt: skip
        # Spot centres in µm, in dataset order: the neighbourhoods of the context token (context_um).
        self._centres_um = np.concatenate([
            resolved[name].centres[frame["row"].to_numpy()] * resolved[name].scale
            for name, frame in self._dataset.spots.groupby("section", observed=True, sort=False)
        ])  # fmt: skip
        if self._method.retrieval and k > len(self._dataset):
            raise ValueError(f"k={k} exceeds the {len(self._dataset)} training spots; choose a smaller k.")
        _check_variation(self._dataset, genes)
        module = self._method.build(
            token_dim=encoder.embed_dim, n_genes=len(genes), architecture=architecture
        )
        self.config: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "versions": versions(),
            "method": self._method.name,
            "genes": list(genes),
            "panel": {
                "n_top_genes": None if n_top_genes is None else int(n_top_genes),
                "exclude_technical": bool(exclude_technical),
                "explicit": explicit_panel,
            },
            "normalization": {"layer": layer, **normalisation},
            "patch": patch.to_dict(),
            "microns_per_pixel": {name: section.microns_per_pixel for name, section in resolved.items()},
            "backbone": {
                "name": backbone,
                "weights": encoder.config.weights,
                "weights_identity": weights_identity(encoder.config, pretrained, random_state),
                "licence": encoder.config.licence,
                "mean": list(encoder.config.mean),
                "std": list(encoder.config.std),
                "fine_tuned": False,
            },
            "architecture": {"token_dim": encoder.embed_dim, "n_genes": len(genes), **architecture.to_dict()},
            "training": None,
            "centering": {"expression": bool(center_expression), "tokens": bool(center_tokens)},
            "stain": None
            if stain is None or reference is None
            else {
                "method": "reinhard",
                "reference": reference.to_dict(),
                "sections": {name: stats.to_dict() for name, stats in stain.items()},
            },
            "k": int(k),
            "smooth_um": float(smooth_um),
            "qc_column": qc_column,
            "seed": int(random_state),
            "training_sections": {
                name: int((self._dataset.spots["section"] == name).sum()) for name in resolved
            },
            "reference_spots": int(len(self._dataset)) if self._method.retrieval else None,
        }
        self.encoder = encoder.eval()
        self.module = module
        self.tensors: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    @classmethod
    def _restore(cls, config, encoder, module, tensors, history) -> SthistModel:
        """A trained model from its parts (as :meth:`load` reads them), without training sections."""
        model = cls.__new__(cls)
        model._method = get_method(config["method"])
        model._dataset = None
        model.config = config
        model.encoder = encoder.eval()
        model.module = None if module is None else module.eval()
        model.tensors = tensors
        model.history = history or []
        return model

    def train(
        self,
        training: TrainingConfig | None = None,
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
            Optimisation settings (:class:`TrainingConfig`: epochs, batch size, learning-rate schedule,
            dihedral views of the fast path, fine-tuning).
        accelerator, devices, strategy, num_nodes, precision
            Passed to the Lightning trainer (e.g. ``strategy='ddp'``, ``devices=4``, ``num_nodes=2``).
        checkpoint_dir
            Folder for Lightning checkpoints (``last.ckpt`` each epoch).
        resume_from
            Checkpoint to resume an interrupted run from.
        token_cache
            A :class:`sthist.data.TokenCache` shared between fits (fast path), so that sections are encoded
            once.

        Returns
        -------
        The trained model; ``history`` holds the mean losses of each epoch and ``config['training']`` the
        settings.
        """
        from sthist.data import TokenDataset, tokens_of
        from sthist.models._training import fit_module

        if self._dataset is None:
            raise ValueError("This model was loaded from disk; it has no training sections to train on.")
        training = training or TrainingConfig()
        if training.fine_tune and not self._method.trainable:
            raise ValueError(
                f"The {self.method} baseline uses frozen features; fine_tune=True does not apply."
            )
        dataset = self._dataset
        if len(dataset) < training.batch_size and self._method.trainable:
            raise ValueError(
                f"Only {len(dataset)} training spots for batch_size={training.batch_size}; lower batch_size "
                "or add sections."
            )
        if training.fine_tune and self.architecture.context_um is not None:
            import warnings

            warnings.warn(
                "context_um adds the neighbourhood's mean token from the cached tokens of the fast path; "
                "fine-tuning trains the model without spatial context (recorded as context_um=None).",
                UserWarning,
                stacklevel=2,
            )
            self.config["architecture"]["context_um"] = None
            self.module = self._method.build(
                token_dim=self.config["architecture"]["token_dim"], n_genes=len(self.genes),
                architecture=self.architecture,
            )  # fmt: skip
        if training.fine_tune and self.centering["tokens"]:
            raise ValueError(
                "center_tokens applies to the frozen-encoder fast path (cached tokens); it cannot be combined "
                "with fine_tune=True."
            )
        expression = torch.from_numpy(dataset.expression)
        sections = torch.from_numpy(dataset.spots["section"].cat.codes.to_numpy(dtype="int64"))
        if self.centering["expression"]:
            expression = _recentre(expression, sections)
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        device = "cuda" if gpu else "cpu"
        identity = f"{self.config['backbone']['name']}|{self.config['backbone']['weights_identity']}"
        apply_runtime_settings()
        if not self._method.trainable:
            with stage("encoding"):
                tokens = tokens_of(
                    dataset, self.encoder, identity=identity, views=1, device=device, token_cache=token_cache,
                    grid=self.token_grid(training=True),
                )  # fmt: skip
                tokens = self._centred_tokens(tokens, sections)
            with stage("training"):
                tokens = self._with_context(tokens, sections)
                self.tensors.update(
                    self._method.fit_closed_form(
                        tokens[:, 0], expression, architecture=self.architecture, groups=sections.numpy()
                    )
                )
        else:
            module = self.module
            if module is None:
                raise ValueError(f"The {self.method} method has no trainable module.")
            self._method.prepare(module, expression)
            train_data: torch.utils.data.Dataset
            if training.fine_tune:
                dataset.augment, dataset.hed_jitter = True, training.hed_jitter
                # Patches from the dataset, targets as prepared here (centred when asked).
                train_data = _WithTargets(dataset, expression) if self.centering["expression"] else dataset
            else:
                with stage("encoding"):
                    tokens = tokens_of(
                        dataset, self.encoder, identity=identity, views=training.views, device=device,
                        token_cache=token_cache, jitter=training.hed_jitter, grid=self.token_grid(training=True),
                    )  # fmt: skip
                    tokens = self._centred_tokens(tokens, sections)
                    tokens = self._with_context(tokens, sections)
                train_data = TokenDataset(tokens, expression, augment=True)
            try:
                with stage("training"):
                    self.history = fit_module(
                        module, self.encoder if training.fine_tune else None, train_data, training,
                        random_state=self.config["seed"], gpu=gpu, accelerator=accelerator, devices=devices,
                        strategy=strategy, num_nodes=num_nodes, precision=precision,
                        checkpoint_dir=checkpoint_dir, resume_from=resume_from,
                    )  # fmt: skip
            finally:
                dataset.augment, dataset.hed_jitter = False, 0.0
            self.module = module.cpu().eval()
            self.encoder = self.encoder.cpu().eval()
            with stage("retrieval bank"):
                self.tensors.update(self._method.reference(self.module, expression))
        self.config["training"] = training.to_dict()
        self.config["backbone"]["fine_tuned"] = bool(training.fine_tune)
        logger.info(
            "fitted %s on %d spots from %d sections",
            self.method,
            len(dataset),
            len(self.config["training_sections"]),
        )
        return self

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
        return {"expression": False, "tokens": False, **self.config.get("centering", {})}

    @property
    def stain_reference(self) -> StainStats | None:
        """Stain statistics every section is mapped onto before encoding (``None``: no stain normalisation)."""
        record = self.config.get("stain")
        return None if not record else StainStats.from_dict(record["reference"])

    @property
    def is_trained(self) -> bool:
        return self.config.get("training") is not None

    @property
    def method(self) -> str:
        return self._method.name

    @property
    def retrieval(self) -> bool:
        """Whether predictions average retrieved reference spots (``k`` applies; a spread is reported)."""
        return self._method.retrieval

    @property
    def genes(self) -> list[str]:
        return list(self.config["genes"])

    @property
    def k(self) -> int:
        return int(self.config["k"])

    @property
    def smooth_um(self) -> float:
        """Radius (µm) over which :func:`sthist.tl.predict` smooths this model's predictions by default (0: none)."""
        return float(self.config.get("smooth_um", 0.0))

    @property
    def architecture(self) -> ArchitectureConfig:
        values = {k: v for k, v in self.config["architecture"].items() if k not in ("token_dim", "n_genes")}
        return ArchitectureConfig.from_dict(values)

    @property
    def training(self) -> TrainingConfig | None:
        return None if self.config["training"] is None else TrainingConfig.from_dict(self.config["training"])

    @property
    def patch(self) -> PatchConfig:
        return PatchConfig.from_dict(self.config["patch"])

    @property
    def unreliable_genes(self) -> list[str]:
        """Genes whose cross-validated Pearson r is below the recorded threshold (empty if never assessed)."""
        reliability = self.config.get("gene_reliability")
        if not reliability:
            return []
        threshold = self.config.get("reliability_threshold", RELIABILITY_THRESHOLD)
        return [g for g in self.genes if reliability.get(g) is None or reliability[g] < threshold]

    def setup_options(self) -> dict:
        """Keyword arguments that set up a model like this one on other sections (cross-validation folds)."""
        return {
            "method": self.method,
            "genes": self.genes,
            "exclude_technical": bool(self.config.get("panel", {}).get("exclude_technical", False)),
            "backbone": self.config["backbone"]["name"],
            "architecture": self.architecture,
            "patch_size_um": self.patch.size_um,
            "k": self.k,
            "smooth_um": self.smooth_um,
            "qc_column": self.config["qc_column"],
            "center_expression": self.centering["expression"],
            "center_tokens": self.centering["tokens"],
            "stain_normalization": self.stain_reference is not None,
            "random_state": self.config["seed"],
        }

    def __repr__(self) -> str:
        return (
            f"SthistModel(method={self.method!r}, backbone={self.config['backbone']['name']!r}, "
            f"genes={len(self.genes)}, reference spots={self.config.get('reference_spots')}, "
            f"patch={self.config['patch']['size_um']:g} µm{'' if self.is_trained else ', not trained'})"
        )

    @torch.inference_mode()
    def predict_tokens(
        self, tokens: torch.Tensor, *, k: int | None = None, section_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expression (spots × genes, log1p units) and its spread over the retrieved neighbours from tokens.

        Retrieval methods average the expression of the ``k`` reference spots whose expression embeddings
        are most similar (cosine) to the patch's image embedding; the spread is their standard deviation.
        Regression and ridge give no spread (NaN). ``section_mean`` is the mean channel vector of the
        section's tokens, needed when the model centres tokens per section.
        """
        if not self.is_trained:
            raise ValueError("The model is not trained yet; call model.train() first.")
        shift = self.section_token_shift(section_mean)
        if shift is not None:
            tokens = tokens.float() + shift
        return self._method.predict(self.module, self.tensors, tokens, self.k if k is None else int(k))

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (refuses to replace them unless asked).

        The model is written completely into a new folder beside ``folder`` and then swapped in by renames, so
        a failed or killed save leaves the previous model loadable (:meth:`load` and the next save put it
        back if the swap was cut half-way). Other files in ``folder`` are kept. The config's digest is kept
        in the weights file and the weights' checksum in the config, so neither can change unnoticed. Files
        are readable as the process's umask allows (like any file it writes). In a multi-process (DDP) run
        only the first process writes.
        """
        from lightning.fabric.utilities.rank_zero import rank_zero_only
        from safetensors.torch import save_file

        if not self.is_trained:
            raise ValueError("The model is not trained yet; call model.train() before saving it.")
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} is a file, not a folder; choose a folder for the model.")
        _recover_save(folder)
        if not overwrite and any((folder / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise FileExistsError(f"{folder} already holds a saved model; pass overwrite=True to replace it.")
        if getattr(rank_zero_only, "rank", 0) != 0:
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.parent / f".{folder.name}{_SAVING}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            tensors = {f"encoder.{k}": v for k, v in self.encoder.model.state_dict().items()}
            if self.module is not None:
                tensors.update({f"model.{k}": v for k, v in self.module.state_dict().items()})
            tensors.update(self.tensors)
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            config = json.loads(json.dumps({**self.config, "history": self.history}))
            save_file(tensors, staging / WEIGHTS_FILE, metadata={CONFIG_DIGEST: config_digest(config)})
            config["weights_sha256"] = file_sha256(staging / WEIGHTS_FILE)
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
            _apply_umask(staging)
            _swap_in(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("saved model to %s", folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SthistModel:
        """Read a model saved by :meth:`save`, validating format, files, checksum and contents."""
        return load(folder)


def _normalised_sections(
    sections: dict[str, Section], layer: str, target_sum: float
) -> tuple[dict[str, Section], dict]:
    """Sections whose tables carry the normalised layer; tables lacking it are normalised in a copy."""
    from sthist.pp import normalize

    prepared, record = {}, None
    for name, section in sections.items():
        table = section.sdata.tables[section.spots.table_key]
        if layer not in table.layers:
            table = table.copy()
            normalize(table, target_sum=target_sum, key_added=layer)
            section = section.with_table(table)
        section_record = table.uns.get(Key.uns.NORMALIZATION, {}).get(layer)
        if section_record is None:
            raise ValueError(
                f"Section {name!r}: layer {layer!r} has no normalisation record; write it with "
                "`sthist.pp.normalize` (or remove the layer and let fit normalise)."
            )
        if record is not None and section_record != record:
            raise ValueError(
                f"Sections were normalised differently: {record} vs {section_record} ({name!r})."
            )
        record = section_record
        prepared[name] = section
    return prepared, record or {}


def _check_variation(dataset, genes: list[str]) -> None:
    """Refuse a panel with nothing to learn (every gene constant over the training spots); warn about some."""
    import warnings

    expression = dataset.expression
    constant = expression.max(axis=0) == expression.min(axis=0)
    if constant.all():
        raise ValueError(
            f"Every gene of the panel is constant over the {len(expression)} training spots (e.g. all counts "
            "zero); there is nothing to learn. Check the counts in the tables and the gene panel."
        )
    if constant.any():
        names = [g for g, c in zip(genes, constant, strict=True) if c]
        warnings.warn(
            f"{len(names)} of {len(genes)} panel genes are constant over the training spots and will be predicted "
            f"as that constant: {names[:10]}.",
            UserWarning,
            stacklevel=3,
        )


def _panel(
    sections: dict[str, Section], layer: str, n_top: int | None, genes, exclude_technical: bool
) -> list[str]:
    """The explicit panel (checked against every section) or HEG ∪ HVG over the training sections.

    With ``n_top`` ``None``: every gene detected in ≥ 10 % of the spots of every section.
    """
    from sthist.pp import select_genes

    tables = {name: section.table for name, section in sections.items()}
    if genes is not None:
        return select_genes(tables, genes=genes)
    return select_genes(
        tables, flavor="heg+hvg", n_top=n_top, layer=layer, exclude_technical=exclude_technical
    )


class _WithTargets(torch.utils.data.Dataset):
    """Items of a patch dataset with their expression replaced by prepared targets (same order)."""

    def __init__(self, dataset, targets: torch.Tensor):
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "expression": self.targets[index]}


def _recentre(expression: torch.Tensor, sections: torch.Tensor) -> torch.Tensor:
    """Each section's expression shifted so that its mean equals the mean over all training spots.

    The model then learns how expression varies within a section, not how sections differ in depth or
    patient; predictions come out on the training level, and per-section correlations are unaffected.
    """
    overall = expression.mean(dim=0)
    centred = expression.clone()
    for code in sections.unique():
        members = sections == code
        centred[members] += overall - expression[members].mean(dim=0)
    return centred


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("sthist", "torch", "timm")}


def upgrade_config(config: dict) -> dict:
    """Convert the config of an older saved model to the current layout (formats 1 and 2 → 3).

    Settings added since a model was saved get the value it was trained with (a reconstruction branch over
    every token).
    """
    config = dict(config)
    if "architecture" in config:
        added = {"reconstruction_grid": 0, "ridge_alpha": "hest"}
        config["architecture"] = {**added, **config["architecture"]}
    if config.get("format_version", FORMAT_VERSION) >= 2:
        return {**config, "format_version": FORMAT_VERSION}
    hyper = dict(config.pop("hyperparameters"))
    architecture = dict(config["architecture"])
    architecture["embedding_dim"] = architecture.pop("dim")
    config["architecture"] = architecture
    config["k"] = int(hyper.pop("k"))
    config["qc_column"] = hyper.pop("qc_column", None)
    hyper["fine_tune"] = bool(config["backbone"].get("fine_tuned", False))
    config["training"] = hyper
    config["centering"] = {"expression": False, "tokens": False}
    config["format_version"] = FORMAT_VERSION
    return config


def load(folder: str | Path) -> SthistModel:
    """Read a model saved by :meth:`SthistModel.save`, validating format, files, checksum and contents."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    with contextlib.suppress(OSError):  # a read-only location: read what is there
        _recover_save(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder holding a saved sthist model.")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete sthist model: missing {missing}.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} does not hold a model config (a JSON object).")
    for key in (
        "format_version",
        "method",
        "genes",
        "backbone",
        "patch",
        "architecture",
        "weights_sha256",
    ):
        if key not in config:
            raise ValueError(f"{config_path} lacks {key!r}; it was not written by sthist or is damaged.")
    found = config["format_version"]
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ValueError(
            f"{config_path}: format_version must be a positive integer, got {found!r}; the file is damaged."
        )
    if found > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was saved in model format {found} by sthist "
            f"{config.get('versions', {}).get('sthist', '?')}; this sthist reads format {FORMAT_VERSION} and "
            "older. Upgrade sthist."
        )
    try:
        method = get_method(config["method"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"{config_path}: unknown method {config['method']!r}.") from error
    if file_sha256(weights_path) != config["weights_sha256"]:
        raise ValueError(
            f"{weights_path} does not match the checksum recorded in {CONFIG_FILE}: the weights were changed or "
            "damaged after saving."
        )
    try:
        with safe_open(weights_path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a valid safetensors file ({error}).") from error
    if found >= 3:
        if metadata.get(CONFIG_DIGEST) != config_digest(config):
            raise ValueError(
                f"{config_path} was changed after saving (its digest no longer matches the one kept in "
                f"{WEIGHTS_FILE}); an edited config (gene order, patch size) would mislabel predictions. Use the "
                "config as saved, or fit and save the model again."
            )
    else:
        logger.warning(
            "%s was saved in model format %d, before configs were protected by a digest; save it again to protect it.",
            folder,
            found,
        )
    config = upgrade_config(config)
    _check_config(config, config_path)
    backbone = config["backbone"]
    encoder = create_encoder(backbone["name"], pretrained=False)
    sizes = {k: config["architecture"][k] for k in ("token_dim", "n_genes")}
    architecture = {k: v for k, v in config["architecture"].items() if k not in sizes}
    try:
        encoder.model.load_state_dict(_take(tensors, "encoder."), strict=True)
        module = method.build(**sizes, architecture=ArchitectureConfig.from_dict(architecture))
        if module is not None:
            module.load_state_dict(_take(tensors, "model."), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{weights_path} does not fit the model its config describes: {first}") from None
    method.check_state(
        tensors,
        token_dim=sizes["token_dim"],
        n_genes=sizes["n_genes"],
        architecture=ArchitectureConfig.from_dict(architecture),
        source=str(weights_path),
    )
    if config.get("centering", {}).get("tokens") and tuple(
        tensors.get("tokens.mean", torch.empty(0)).shape
    ) != (sizes["token_dim"],):
        raise ValueError(f"{weights_path} lacks the training mean of the tokens that this model centres on.")
    history = config.pop("history", [])
    return SthistModel._restore(config, encoder, module, tensors, history)


def _check_config(config: dict, source: Path) -> None:
    """Refuse configs whose contents cannot describe a model (checked before anything is built)."""
    genes = config["genes"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise ValueError(f"{source}: 'genes' must be a non-empty list of gene names.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"{source}: 'genes' names some genes twice; the file is damaged.")
    try:
        PatchConfig.from_dict(config["patch"])
        n_genes = config["architecture"]["n_genes"]
        token_dim = config["architecture"]["token_dim"]
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{source}: invalid patch or architecture ({error}).") from None
    if n_genes != len(genes):
        raise ValueError(
            f"{source}: the architecture predicts {n_genes} genes but 'genes' names {len(genes)}."
        )
    if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim < 1:
        raise ValueError(f"{source}: architecture token_dim must be a positive integer, got {token_dim!r}.")


def config_digest(config: dict) -> str:
    """SHA-256 of a model config in canonical JSON, without the weights' checksum (which it protects)."""
    content = {k: v for k, v in config.items() if k != "weights_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _apply_umask(folder: Path) -> None:
    """Give ``folder`` and its files the permissions the process's umask allows (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def _swap_in(staging: Path, folder: Path) -> None:
    """Move the complete new model in ``staging`` to ``folder``; the old folder is moved aside, then merged back.

    Files of the old folder other than the model's are moved into the new one. A process killed between the
    renames leaves ``.<name>.sthist-replaced-*`` beside ``folder``; :func:`_recover_save` finishes the job.
    """
    if not folder.exists():
        os.replace(staging, folder)
        return
    aside = folder.parent / f".{folder.name}{_REPLACED}{uuid.uuid4().hex}"
    os.replace(folder, aside)
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    _recover_save(folder)


def _recover_save(folder: Path) -> None:
    """Finish or undo saves into ``folder`` that were cut short (killed between renames)."""
    for staging in folder.parent.glob(f".{folder.name}{_SAVING}*"):
        if not _in_use(staging):
            shutil.rmtree(staging, ignore_errors=True)
    for aside in sorted(folder.parent.glob(f".{folder.name}{_REPLACED}*")):
        if not folder.exists():
            os.replace(aside, folder)  # the new model never arrived: the old one comes back
            logger.warning("restored the model in %s from an interrupted save", folder)
            continue
        for entry in aside.iterdir():
            if entry.name not in (CONFIG_FILE, WEIGHTS_FILE) and not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
        shutil.rmtree(aside, ignore_errors=True)


def _in_use(staging: Path) -> bool:
    """Whether a staging folder may still be written by a running save (touched in the last hour)."""
    import time

    try:
        return time.time() - staging.stat().st_mtime < 3600
    except FileNotFoundError:
        return False


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    taken = {k.removeprefix(prefix): tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
    return taken

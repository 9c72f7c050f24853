"""Validated pipeline parameters.

Every tunable value lives in ``params.yaml``. It is parsed into the models below before any stage
runs so that a typo or an impossible value fails at once with a message naming the key, instead of
surfacing as a confusing error minutes into training.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# every choice list comes from the registry of its implementations: one source of truth
from siamese.calibration.probability import METHODS as PROBABILITY_MAPS
from siamese.calibration.thresholds import STRATEGIES
from siamese.data.augment import check_image_shape, check_steps, resolve_steps
from siamese.data.files import DEFAULT_MAX_FILE_BYTES
from siamese.data.images import CHANNELS, RESIZES, ImageSpec
from siamese.data.manifests import is_manifest
from siamese.data.sources import DUPLICATE_POLICIES, LAYOUTS, MANIFEST_LAYOUT
from siamese.distances import DISTANCES
from siamese.errors import ParamsError
from siamese.evaluation.metrics import RANKING_METRICS
from siamese.losses import LOSSES as LOSS_REGISTRY
from siamese.losses.contrastive import FORMS as CONTRASTIVE_FORMS
from siamese.mining import MINERS as MINER_REGISTRY
from siamese.models.encoders import ENCODERS, EXTERNAL_FORMS, check_encoder
from siamese.models.onnx import RUNTIMES

# train.loss / train.miner: the registered losses, each naming the miners it works with
LOSSES = tuple(LOSS_REGISTRY)
MINERS = tuple(MINER_REGISTRY)
LOSS_MINERS = {name: loss.miners for name, loss in LOSS_REGISTRY.items()}


# train.monitor -> (the logged validation metric, its better direction); "last" keeps no best
# checkpoint and never stops early. Named here because the trainer's callbacks read it.
MONITORS: dict[str, tuple[str | None, str]] = {
    "roc_auc": ("val/roc_auc", "max"),
    "pair_loss": ("val/pair_loss", "min"),
    "last": (None, "max"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataParams(_Strict):
    source: str = Field(
        "digits",
        description="'digits' (scikit-learn's built-in handwritten digits), a directory of "
        "identity folders or a zip archive of one, or a .csv / .parquet table listing the images "
        "(see layout)",
    )
    layout: Literal[LAYOUTS] = Field(
        "auto",
        description="flat: root/<identity>/<image>; grouped: root/<group>/<identity>/<image> "
        "(Omniglot alphabets/characters); signatures: root/<writer>/genuine|forged/<image> "
        "(SVC2004); csv: data.source is a .csv or .parquet table with columns path, identity "
        "(optional group, split, forged), paths relative to the table's folder; auto: detected "
        "from the folder depth and names (a .csv / .parquet source: csv)",
    )
    identity_depth: int | None = Field(
        None,
        ge=1,
        description="folder levels below root that make up one identity (flat: 1, grouped: 2); "
        "null: the layout's default",
    )
    split_by: Literal["auto", "identity", "group"] = Field(
        "auto",
        description="identity: identities are split at random; group: whole groups (e.g. "
        "alphabets) are held out; auto: group when the dataset has groups",
    )
    rotation_classes: list[Literal[90, 180, 270]] = Field(
        default_factory=list,
        description="add each training identity rotated by these degrees as a new identity",
    )
    image_size: int | list[int] = Field(
        28,
        description="S: every image becomes S x S pixels; [H, W]: height x width (e.g. wide "
        "signatures); each side 8 to 512",
    )
    channels: Literal[CHANNELS] = Field(
        1,
        description="1: grayscale; 3: RGB colour (grayscale images are expanded to 3 equal "
        "channels, transparency is composited on white)",
    )
    resize: Literal[tuple(RESIZES)] = Field(
        "stretch",
        description="stretch: scale each axis to image_size (the aspect ratio changes); pad: "
        "keep the aspect ratio and letterbox with the image's own background (the median of its "
        "border pixels); crop: keep the aspect ratio, scale the short side and cut the centre",
    )
    min_images_per_identity: int = Field(2, ge=2)
    on_bad_image: Literal["error", "skip"] = "error"
    on_small_identity: Literal["error", "skip"] = "error"
    on_duplicate_image: Literal[DUPLICATE_POLICIES] = Field(
        "error",
        description="the same image (identical bytes) under two identities is label noise and "
        "leaks between the splits; error: fail naming both copies; skip: leave out every copy "
        "(counted in artifacts/prepared); keep: use them as they are",
    )
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES,
        ge=1_000,
        description="the largest image file (or zip entry) read; larger ones, and entries that "
        "are not regular files (devices, FIFOs), are refused before they are read",
    )
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    workers: int | None = Field(
        None,
        ge=1,
        description="processes that decode images in prepare (1: no pool); null: one per "
        "available CPU core",
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size_is_side_or_height_width(cls, v: Any) -> Any:
        def side(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and 8 <= x <= 512

        if side(v):
            return v
        if isinstance(v, list | tuple) and len(v) == 2 and all(side(x) for x in v):
            return [int(x) for x in v]
        raise ValueError(
            "must be one side S (an integer from 8 to 512: S x S pixels) or [height, width] of "
            f"two such integers (got {v!r})"
        )

    @property
    def image(self) -> ImageSpec:
        """What every image becomes (size, channels, resize): prepare, training and the model."""
        return ImageSpec.of(self.image_size, self.channels, self.resize)

    @model_validator(mode="after")
    def _depth_fits_layout(self) -> DataParams:
        depth = self.identity_depth
        table = is_manifest(self.source)
        if self.layout == MANIFEST_LAYOUT and not table:
            raise ValueError(
                f"data.layout {MANIFEST_LAYOUT} reads a table: data.source must be a .csv or "
                f".parquet file listing the images (got {self.source!r})"
            )
        if table and self.layout not in (MANIFEST_LAYOUT, "auto"):
            raise ValueError(
                f"data.source {self.source!r} is a table: set data.layout to {MANIFEST_LAYOUT} "
                f"(or auto), not {self.layout}"
            )
        if depth is None:
            return self
        if table:
            raise ValueError(
                "data.identity_depth does not apply to a table (its identity column names each "
                f"image's identity); set it to null (got {depth})"
            )
        if self.layout == "signatures" and depth != 1:
            raise ValueError(
                f"data.identity_depth must be 1 (the writer) for layout signatures (got {depth})"
            )
        if self.layout == "grouped" and depth < 2:
            raise ValueError(
                f"data.identity_depth must be >= 2 for layout grouped (<group>/<identity>; "
                f"got {depth})"
            )
        if self.layout == "flat" and depth != 1:
            raise ValueError(
                f"data.identity_depth must be 1 for layout flat (got {depth}); use layout grouped "
                "for deeper identity folders"
            )
        return self

    @model_validator(mode="after")
    def _rotations_need_square_images(self) -> DataParams:
        image = self.image
        if self.rotation_classes and image.height != image.width:
            raise ValueError(
                f"data.rotation_classes needs square images: a {image.height} x {image.width} "
                "image turned by 90 degrees no longer fits; set data.image_size to one side S "
                "or data.rotation_classes: []"
            )
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be < 1 so some identities remain "
                f"for training (got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class MineParams(_Strict):
    val_pairs: int = Field(1000, ge=2, description="balanced validation pairs (half positive)")
    test_pairs: int = Field(2000, ge=2, description="balanced test pairs (half positive)")
    train_pairs: int = Field(
        4000, ge=0, description="balanced training pairs for the offline_pairs miner (0: none)"
    )
    hard_negatives_from: str | None = Field(
        None,
        description="a registered model (e.g. models:/siamese-digits@champion) whose embeddings "
        "choose the hardest negative training pairs; null: random negatives",
    )
    hard_negative_fraction: float = Field(0.5, ge=0.0, le=1.0)
    skilled_forgery_pairs: int | None = Field(
        None,
        ge=0,
        description="signature data: extra (genuine, forged) negative pairs of one writer in the "
        "val and test sets; null: as many as the random negatives (at most all there are)",
    )


class ModelParams(_Strict):
    encoder: str = Field(
        "conv4",
        description=f"a built-in encoder ({', '.join(ENCODERS)}), or {' or '.join(EXTERNAL_FORMS)}",
    )
    encoder_args: dict[str, Any] = Field(
        default_factory=dict,
        description="the encoder's own arguments: resnet12 widths and drop_block, resnet18/34 "
        "widths, a python: factory's keyword arguments, timm.create_model's",
    )
    pretrained: str | None = Field(
        None,
        min_length=1,
        description="a state dict (safetensors, or torch.save'd tensors) loaded into the "
        "encoder's backbone before training; null: random initialisation",
    )
    pretrained_strict: bool = Field(
        True,
        description="missing, unexpected or mis-shaped keys in model.pretrained fail naming "
        "them; false: load the keys that fit and report the rest",
    )
    compile: bool = Field(False, description="wrap the encoder in torch.compile for training")
    embedding_dim: int = Field(64, ge=2, le=4096)
    channels: int = Field(
        64,
        ge=1,
        le=1024,
        description="the encoder's conv width (filters per layer); the images' own channels are "
        "data.channels",
    )
    normalize: bool = Field(True, description="L2-normalise embeddings")

    @model_validator(mode="after")
    def _encoder_can_be_built(self) -> ModelParams:
        # a ParamsError's message names the key; pydantic reports it under model
        try:
            check_encoder(self.encoder, self.encoder_args)
        except ParamsError as err:
            raise ValueError(str(err)) from None
        return self

    @field_validator("pretrained")
    @classmethod
    def _pretrained_is_a_file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v} does not exist or is not a file (a state dict to load)")
        return v


class AugmentStep(_Strict):
    name: str = Field(..., description="an albumentations transform class, e.g. Affine")
    params: dict[str, Any] = Field(default_factory=dict)


class TrainParams(_Strict):
    loss: str = "contrastive"
    miner: str = "hard_pairs"
    margin: float = Field(0.5, description="loss margin on the distance")
    distance: Literal[DISTANCES] = "euclidean"
    contrastive_form: Literal[CONTRASTIVE_FORMS] = "squared"
    soft_margin: bool = Field(False, description="triplet: softplus instead of hinge")
    ms_alpha: float = Field(2.0, gt=0, description="multi-similarity: positive weight")
    ms_beta: float = Field(50.0, gt=0, description="multi-similarity: negative weight")
    ms_base: float = Field(0.5, description="multi-similarity: similarity offset")
    temperature: float = Field(
        0.1, gt=0, le=10, description="supcon / ntxent: softmax temperature on cosine similarity"
    )
    identities_per_batch: int = Field(8, ge=2, description="P of the P x K sampler")
    images_per_identity: int = Field(8, description="K of the P x K sampler")
    batches_per_epoch: int | None = Field(None, ge=1, description="default: one pass over train")
    max_epochs: int = Field(8, ge=1)
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget for fitting; Lightning stops at the next step"
    )
    lr: float = Field(1e-3)
    backbone_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="the encoder's backbone trains at lr x this (its projection at lr): below "
        "1 to fine-tune model.pretrained weights gently",
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description="train only the encoder's projection (and a similarity head) for this many "
        "first epochs, the backbone frozen; 0: never frozen",
    )
    weight_decay: float = Field(1e-4, ge=0.0)
    early_stopping_patience: int = Field(3, ge=1)
    monitor: Literal[tuple(MONITORS)] = Field(
        "roc_auc",
        description="exported weights: best validation ROC AUC, lowest validation pair loss, or "
        "the last epoch (no early stopping)",
    )
    num_workers: int = Field(0, ge=0)
    resume: bool = Field(
        True,
        description="continue an interrupted training of the same params and data from its last "
        "checkpoint (artifacts/.train.partial) instead of starting over",
    )

    @field_validator("loss", "miner")
    @classmethod
    def _known_choice(cls, v: str, info) -> str:
        allowed = {"loss": LOSSES, "miner": MINERS}[info.field_name]
        if v not in allowed:
            raise ValueError(f"unknown {info.field_name} {v!r}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("margin", "lr")
    @classmethod
    def _positive_finite(cls, v: float, info) -> float:
        if not math.isfinite(v) or v <= 0:
            what = {"lr": "learning rate"}.get(info.field_name, info.field_name)
            raise ValueError(f"{what} must be a finite number > 0 (got {v})")
        return v

    @field_validator("images_per_identity")
    @classmethod
    def _k_at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"K must be >= 2 so every batch holds positive pairs (got {v})")
        return v

    @model_validator(mode="after")
    def _miner_fits_loss(self) -> TrainParams:
        allowed = LOSS_MINERS[self.loss]
        if self.miner not in allowed:
            raise ValueError(
                f"miner {self.miner!r} does not work with loss {self.loss!r}; "
                f"allowed for {self.loss}: {', '.join(allowed)}"
            )
        return self


class TrainerParams(_Strict):
    """Lightning Trainer settings. Their types are checked here; their values are checked the
    way Lightning takes them (its registries and parsers, and the machine: is a GPU there?) by
    ``siamese.training.settings.check_trainer``, which ``siamese check``, ``siamese run``, the
    flow and the train stage call before anything runs or is recorded. Not here: Lightning takes
    seconds to import, and every stage validates its params."""

    accelerator: str = Field("cpu", description="cpu, cuda, gpu, mps, tpu or auto")
    devices: int | str | list[int] = Field(
        1,
        description="the number of devices (>= 1; the CPU: processes), -1 or 'auto' for all, or "
        "a list of GPU indices such as [0, 1]",
    )
    num_nodes: int = Field(
        1, ge=1, description="machines for multi-node DDP (MASTER_ADDR, NODE_RANK, ... set)"
    )
    strategy: str = Field("auto", description="auto, ddp, ddp_spawn, ... (Lightning's names)")
    precision: str | int = Field(
        "32-true",
        description="32-true, 16-mixed, bf16-mixed, bf16-true or 64-true (on the CPU Lightning "
        "runs 16-mixed as bf16-mixed, with a warning; 16-true is refused: float16 AdamW state)",
    )
    deterministic: bool = True
    log_every_n_steps: int = Field(10, ge=1)

    @field_validator("devices", "num_nodes", "precision", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info) -> Any:
        # YAML reads `yes`/`true` as a bool, which pydantic would take as the number 1
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name} must not be a yes/no value (got {v})")
        return v


class CalibrateParams(_Strict):
    strategy: Literal[tuple(STRATEGIES)] = "max_accuracy"
    target: float | None = Field(
        None, description="the FAR (target_far) or FRR (target_frr) to stay within"
    )
    probability: Literal[tuple(PROBABILITY_MAPS)] = "platt"
    bootstrap_resamples: int = Field(1000, ge=0, description="for the threshold's CI (0: off)")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _target_matches_strategy(self) -> CalibrateParams:
        if self.strategy.startswith("target_"):
            if self.target is None or not 0 < self.target < 1:
                raise ValueError(
                    f"strategy {self.strategy} needs calibrate.target in (0, 1), "
                    f"e.g. 0.001 (got {self.target})"
                )
        elif self.target is not None:
            raise ValueError(
                f"calibrate.target is only used by target_far / target_frr, not {self.strategy}"
            )
        return self


class EvaluateParams(_Strict):
    far_targets: list[float] = Field(default_factory=lambda: [1e-2, 1e-3])
    histogram_bins: int = Field(30, ge=2)
    reliability_bins: int = Field(10, ge=2)
    bootstrap_resamples: int = Field(1000, ge=0, description="for the metrics' CIs (0: off)")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    kfold: int = Field(10, ge=0, description="LFW-style k-fold accuracy (0 or 1: off)")
    hardest_pairs: int = Field(8, ge=0, description="false accepts/rejects shown in the sheet")
    retrieval: bool = Field(
        True, description="leave-one-out precision@1, R-precision and MAP@R on the test images"
    )
    oneshot_ways: list[int] = Field(
        default_factory=lambda: [20, 5],
        description="N of the N-way one-shot episodes on the test identities (clamped to the "
        "identities available)",
    )
    oneshot_shots: int = Field(1, ge=1, le=100, description="K support images per class")
    oneshot_queries: int = Field(1, ge=1, le=100, description="query images per class")
    oneshot_episodes: int = Field(1000, ge=0, description="episodes per setting (0: off)")

    @field_validator("oneshot_ways")
    @classmethod
    def _ways_at_least_two(cls, v: list[int]) -> list[int]:
        for n in v:
            if n < 2:
                raise ValueError(f"every one-shot N must be >= 2 (got {n})")
        if len(set(v)) != len(v):
            raise ValueError(f"one-shot ways must be distinct (got {v})")
        return v

    @field_validator("far_targets")
    @classmethod
    def _fars_in_range(cls, v: list[float]) -> list[float]:
        for far in v:
            if not 0 < far < 1:
                raise ValueError(f"every FAR target must lie in (0, 1) (got {far})")
        return v


class IdentifyParams(_Strict):
    """1:N identification against an enrolled gallery: how evaluate measures it on the test
    identities, and how ``siamese index`` calibrates a gallery's open-set and anomaly thresholds
    on the validation identities (siamese.evaluation.openset, siamese.registry.identify)."""

    enrolled_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="share of the identities enrolled; the others probe as not enrolled (at "
        "least one identity on each side)",
    )
    gallery_images: int = Field(
        1, ge=1, le=1000, description="images per enrolled identity in the gallery (the rest probe)"
    )
    target_fpir: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="the open-set threshold `siamese identify` answers `unknown` beyond: at "
        "most this share of not-enrolled validation probes identified",
    )
    fpir_targets: list[float] = Field(
        default_factory=lambda: [0.01, 0.1],
        min_length=1,
        description="evaluate reports FNIR at these FPIRs",
    )
    anomaly_k: int = Field(
        1, ge=1, le=1000, description="kNN novelty: distance to the k-th nearest known sample"
    )
    target_false_alarm: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="the anomaly alarm threshold: at most this share of known validation "
        "samples flagged",
    )

    @field_validator("fpir_targets")
    @classmethod
    def _fpirs_in_range(cls, v: list[float]) -> list[float]:
        for fpir in v:
            if not 0 < fpir < 1:
                raise ValueError(f"every FPIR target must lie in (0, 1) (got {fpir})")
        if len(set(v)) != len(v):
            raise ValueError(f"FPIR targets must be distinct (got {v})")
        return v


class RegisterParams(_Strict):
    model_name: str = Field(
        "siamese-digits",
        min_length=1,
        description="registered model name (MLflow's rules: no '/' or ':', checked by "
        "siamese.registry.names before any stage runs); loaded as models:/NAME@champion",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        description="the MLflow experiment of the training runs; null: one per registered model "
        "(register.model_name, which each preset sets), so the runs of different datasets and "
        "presets never share one",
    )

    promote_metric: Literal[tuple(RANKING_METRICS)] = Field(
        "roc_auc",
        description="what `siamese promote` compares on the benchmark pairs: roc_auc and "
        "tar_at_far (higher is better) or eer (lower is better)",
    )
    promote_far: float = Field(
        0.01, gt=0.0, lt=1.0, description="the FAR of promote_metric tar_at_far"
    )
    min_improvement: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="the challenger must beat the champion by more than this (in the metric's "
        "own units, in its better direction) to take the champion alias",
    )

    @field_validator("min_improvement")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"register.min_improvement must be finite (got {v})")
        return v

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment the runs go to: ``experiment`` when set, else ``model_name``."""
        return self.experiment or self.model_name


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#LW]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly")


class ScheduleParams(_Strict):
    cron: str = Field(
        "0 3 * * 1", description="when the retrain-and-promote deployment runs (5-field cron)"
    )
    timezone: str = Field("UTC", description="IANA time zone of the cron schedule")
    deployment: str = Field("scheduled-retrain", min_length=1, description="deployment name")

    @field_validator("cron")
    @classmethod
    def _cron_shape(cls, v: str) -> str:
        fields = v.split()
        if v.strip() in _CRON_MACROS:
            return v.strip()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(
                f"schedule.cron must be 5 cron fields (minute hour day month weekday), "
                f"e.g. '0 3 * * 1' (got {v!r})"
            )
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (an IANA name, e.g. Europe/Berlin)"
            ) from None
        return v


class ServeParams(_Strict):
    max_pixels: int = Field(
        25_000_000,
        ge=4,
        le=1_000_000_000,
        description="the served model refuses images declaring more pixels (width x height) "
        "before decoding them (HTTP 400); stored in the model package",
    )
    max_request_bytes: int = Field(
        50_000_000,
        ge=1_000,
        le=10_000_000_000,
        description="`mlflow models serve` answers request bodies over this many bytes with "
        "HTTP 413 before parsing them (the body is read first: put a proxy limit in front for "
        "untrusted clients); stored in the model package",
    )
    max_rows: int = Field(
        10_000,
        ge=1,
        le=100_000_000,
        description="`mlflow models serve` answers requests of more rows with HTTP 413 before "
        "any image is decoded (in process there is no row limit); stored in the model package",
    )
    chunk_images: int = Field(
        32,
        ge=1,
        le=4096,
        description="the served model decodes and embeds this many images at a time: a "
        "request's working memory is one chunk of decoded images and the network's "
        "activations for it, not all its images; stored in the model package",
    )
    export_onnx: bool = Field(
        True,
        description="register also exports the encoder (and the distance) to ONNX into the "
        "package, checked against PyTorch on real images; an encoder that cannot be exported "
        "is registered without it (the run's siamese.onnx tag says why)",
    )
    runtime: Literal[RUNTIMES] = Field(
        "torch",
        description="what runs the encoder in the served model: torch, or onnx (onnxruntime, "
        "the package's ONNX export; needs export_onnx); stored in the model package",
    )

    @model_validator(mode="after")
    def _onnx_runtime_needs_export(self) -> ServeParams:
        if self.runtime == "onnx" and not self.export_onnx:
            raise ValueError(
                "serve.runtime: onnx needs serve.export_onnx: true (the served model runs the "
                "package's ONNX export)"
            )
        return self


warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(_Strict):
    seed: int = 42
    data: DataParams = Field(default_factory=DataParams)
    mine: MineParams = Field(default_factory=MineParams)
    model: ModelParams = Field(default_factory=ModelParams)
    augment: list[AugmentStep] | str = Field(
        default_factory=list,
        description="albumentations steps, or a named preset (e.g. koch: Koch et al. 2015's "
        "affine distortions)",
    )
    train: TrainParams = Field(default_factory=TrainParams)
    trainer: TrainerParams = Field(default_factory=TrainerParams)
    calibrate: CalibrateParams = Field(default_factory=CalibrateParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    identify: IdentifyParams = Field(default_factory=IdentifyParams)
    register: RegisterParams = Field(default_factory=RegisterParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    serve: ServeParams = Field(default_factory=ServeParams)

    @model_validator(mode="after")
    def _offline_pairs_need_mined_pairs(self) -> Params:
        if not MINER_REGISTRY[self.train.miner].online and self.mine.train_pairs == 0:
            raise ValueError(f"train.miner={self.train.miner} needs mine.train_pairs > 0")
        return self

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_is_steps_or_preset(cls, v: Any) -> Any:
        if not isinstance(v, str | list | tuple):
            raise ValueError(
                "must be a preset name (e.g. koch) or a list of {name, params} steps "
                f"(got {type(v).__name__})"
            )
        return v

    @field_validator("augment")
    @classmethod
    def _augment_steps_exist(
        cls, steps: list[AugmentStep] | str, info: ValidationInfo
    ) -> list[AugmentStep] | str:
        resolved = resolve_steps(steps)
        check_steps(resolved)
        data = info.data.get("data")  # absent when data.* itself failed validation
        if resolved and data is not None:
            # every step works on the configured images and keeps their shape
            check_image_shape(resolved, data.image.shape)
        return steps


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid parameters in {origin}:"]
    for e in err.errors():
        # a union (augment: list of steps | preset name) reports each branch: show the key path
        # without the branch names, and leave out the branch the input obviously was not meant for
        if e["type"] == "string_type" and e["loc"] and e["loc"][-1] == "str":
            continue
        loc = [p for p in e["loc"] if not (isinstance(p, str) and "[" in p)]
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the allowed keys)"
        # a message that names its own key (model.encoder within model) is shown as it is
        lines.append(f"  {msg}" if msg.startswith(f"{key}.") else f"  {key}: {msg}")
    return "\n".join(lines)


def validate_params(raw: dict[str, Any], origin: str = "params") -> Params:
    """Validate a params mapping, raising ParamsError naming each bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin} must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, origin)) from None


MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _where(mark: yaml.Mark, other: yaml.Mark) -> str:
    if mark.line == other.line:  # two keys on one line: a flow mapping such as {a: 1, a: 2}
        return f"line {mark.line + 1}, column {mark.column + 1}"
    return f"line {mark.line + 1}"


def _refuse_duplicate_keys(
    loader: yaml.SafeLoader, root: yaml.Node, prefix: str, origin: str
) -> None:
    """Every mapping of the composed document, at every depth, holds each key once.

    YAML leaves a repeated key to the loader, and PyYAML silently keeps the last one: a second
    ``train:`` section would replace the first whole, and ``siamese check`` would validate what
    is left. Checked on the node tree, before anything is constructed, so that every repeated
    key is named with both of its lines."""
    found: list[tuple[int, str]] = []
    checked: set[int] = set()
    stack = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if id(node) in checked:  # an alias of a node already checked (or a recursive one)
            continue
        checked.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base` overrides the merged keys on purpose
                stack.append((value_node, path))
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the constructor reports it
                continue
            if seen is not key_node.start_mark:
                mark = key_node.start_mark
                found.append(
                    (
                        mark.line,
                        f"  {_key_path(path, key)}: given twice ({_where(seen, mark)} and "
                        f"{_where(mark, seen)})",
                    )
                )
            stack.append((value_node, _key_path(path, key)))
    if found:
        raise ParamsError(
            "\n".join(
                [f"{origin} gives a key twice; YAML would silently keep only the last one:"]
                + [line for _, line in sorted(found)]
                + ["  remove the repeated keys, or merge their sections into one"]
            )
        )


def load_yaml(text: str, origin: str, name: str | None = None, prefix: str = "") -> Any:
    """Parse one YAML document safely (as ``yaml.safe_load``), refusing a key repeated in any
    mapping. ``origin`` names the source in messages ("params file params.yaml"), ``name`` in
    syntax errors (their ``"params.yaml", line 3`` position), ``prefix`` is the key path of the
    document (an override's key)."""
    stream = io.StringIO(text)
    stream.name = name or origin  # YAML errors name the file, not "<unicode string>"
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node, prefix, origin)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_KINDS = {"list": "a list", "str": "a string", "int": "a number", "float": "a number"}


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The params file as a plain mapping. An empty file (or one holding only comments, or
    ``null``) is ``{}``: every key takes its default, as ``siamese check`` reports, and ``--set``
    writes its overrides into it. Any other top level than a mapping is refused."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"params file {path} not found; run from the project root or pass --params PATH"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(
            f"params file {path} cannot be read as UTF-8 text ({err}); restore it, e.g. "
            f"`git checkout {path}`"
        ) from None
    try:
        raw = load_yaml(text, f"params file {path}", str(path))
    except yaml.YAMLError as err:
        raise ParamsError(
            f"params file {path} is not valid YAML; fix the syntax at the position below "
            f"(`siamese check` validates it):\n{err}"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(
            f"params file {path} must hold a mapping of keys to values at the top level (e.g. "
            f"`train:` sections), not {_KINDS.get(type(raw).__name__, type(raw).__name__)}; "
            "restore it, e.g. "
            f"`git checkout {path}`"
        )
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    return validate_params(read_params_file(path), origin=str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value as YAML, like ``dvc exp run --set-param``)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r} must look like key.path=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ParamsError(f"override {text!r} has an empty key")
    try:
        parsed = load_yaml(value, f"override {text!r}", prefix=key) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of raw params with dotted overrides applied (validated by the caller)."""

    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (the same keys in every MLflow run)."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat

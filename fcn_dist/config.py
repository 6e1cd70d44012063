"""Typed run configuration: nested frozen dataclasses, YAML files and dotted CLI overrides.

Precedence is dataclass defaults, then the YAML file, then ``section.key=value`` overrides.
OmegaConf does the merging, the YAML parsing and the type coercion; this module turns its
errors into one-line messages that name the bad key and the valid ones, and validates values
in ``__post_init__``. Field docstrings are the config reference (``config_reference()``),
shown by ``fcn-train --help`` and copied into README.md.

This module must not import torch: sweep tooling and the launch scripts validate configs
without it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .files import atomic_write_text
from .labels import IGNORE_INDEX

ARCHS = ("fcn32s", "fcn16s", "fcn8s")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
UPSAMPLES = ("learnable", "fixed")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key or file."""


def _check_choice(section: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r} is not one of {', '.join(map(str, choices))}")


def _check_finite(section: str, obj: Any) -> None:
    """Every float (or list of floats) field of a section is a finite number: YAML reads .nan and .inf."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{section}.{f.name}={value!r} must be a finite number")


def _check_positive(section: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{key}={value!r} must be {bound}")


INFERENCE_MODES = ("whole", "slide")
LOSSES = ("ce", "dice", "ce+dice", "focal")
"""``optim.loss`` values (``fcn_dist.losses`` implements them)."""
CLASS_WEIGHTS_CHOICES = ("none", "auto")
"""``optim.class_weights`` values other than a list of weights."""


def _class_weights(value: Any) -> Any:
    """``optim.class_weights`` checked: ``none`` (also YAML null), ``auto``, or a list of floats >= 0, not all 0.

    Its length is checked against ``model.num_classes`` by ``Config``.
    """
    if value is None:
        return "none"
    if isinstance(value, str) and value in CLASS_WEIGHTS_CHOICES:
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        weights = [float(v) for v in value]
        if all(math.isfinite(w) and w >= 0 for w in weights) and any(w > 0 for w in weights):
            return weights
    raise ConfigError(f"optim.class_weights={value!r} must be none, auto or a list of model.num_classes "
                      "finite numbers >= 0 (not all 0), e.g. optim.class_weights=[1.0,2.5,...]")

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
"""Pillow's decompression-bomb limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (its default), where
``Image.open`` refuses a file: the default of ``data.max_image_pixels`` and the CLIs'
``--max-image-pixels`` (a constant here: this module imports no PIL)."""


@dataclass(frozen=True)
class InferenceOptions:
    """How inference covers an image (``fcn_dist.inference``): mode, slide tiles, test-time augmentation.

    The defaults are the package's only tile/stride defaults: ``fcn-eval``/``fcn-predict``
    flags and ``train.eval_mode=slide`` use them.
    """

    mode: str = "whole"
    """whole (one pass, padded to a multiple of 32) or slide (overlapping tiles, logits averaged)."""
    tile: tuple[int, int] = (320, 480)
    """slide: (H, W) tile size, the training crop of the d2l recipe."""
    stride: tuple[int, int] = (213, 320)
    """slide: (H, W) step between tiles (a third of overlap)."""
    flip: bool = False
    """Also average the horizontally flipped pass."""
    scales: tuple[float, ...] = (1.0,)
    """Resize factors averaged over (1.0 alone runs no resize)."""

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"inference mode {self.mode!r} is not one of {', '.join(INFERENCE_MODES)}")
        if len(self.tile) != 2 or min(self.tile) < 1 or len(self.stride) != 2 or min(self.stride) < 1:
            raise ValueError(f"tile {self.tile} and stride {self.stride} must be (H, W) with positive sizes")
        if any(s > t for s, t in zip(self.stride, self.tile)):
            raise ValueError(f"stride {self.stride} larger than tile {self.tile} would leave pixels uncovered")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales {self.scales} must be positive")


def tile_windows(height: int, width: int, tile: Sequence[int],
                 stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Tiles covering an image, the last row and column aligned to its border.

    Args:
        height, width: image size.
        tile: (h, w) tile size; clipped to the image when larger.
        stride: (h, w) step between tile origins.

    Returns:
        (y0, y1, x0, x1) windows, all of the same size ``min(tile, image)``, whose union is
        the whole image.

    Pure Python, beside ``InferenceOptions``: torch's slide mode (``fcn_dist.inference``) and the
    ONNX Runtime one (``fcn_dist.runtime``) cut the same tiles.
    """
    def starts(size: int, t: int, s: int) -> list[int]:
        t = min(t, size)
        last = size - t
        return sorted(set(list(range(0, last, s)) + [last]))

    th, tw = min(tile[0], height), min(tile[1], width)
    return [(y, y + th, x, x + tw) for y in starts(height, tile[0], stride[0])
            for x in starts(width, tile[1], stride[1])]


@dataclass(frozen=True)
class ModelConfig:
    """The network: FCN variant, backbone, classes and initial weights."""

    arch: str = "fcn32s"
    """FCN variant: fcn32s (the d2l model), fcn16s or fcn8s (skips from layer3 / layer2)."""
    backbone: str = "resnet18"
    """torchvision ResNet trunk: resnet18, resnet34, resnet50 or resnet101."""
    num_classes: int = 21
    """Number of output classes (21 for Pascal VOC, background included)."""
    pretrained: str = "imagenet"
    """Backbone weights: imagenet (torchvision weights, cached in TORCH_HOME), none, or a path to a .pth/.safetensors state dict."""
    upsample: str = "learnable"
    """Transposed-conv upsampling: learnable (the seed) or fixed (bilinear and frozen, as the FCN paper)."""

    def __post_init__(self) -> None:
        _check_choice("model", "arch", self.arch, ARCHS)
        _check_choice("model", "backbone", self.backbone, BACKBONES)
        _check_choice("model", "upsample", self.upsample, UPSAMPLES)
        _check_positive("model", "num_classes", self.num_classes)
        if self.num_classes > IGNORE_INDEX:
            raise ConfigError(f"model.num_classes must be <= {IGNORE_INDEX}: masks are uint8 and {IGNORE_INDEX} is void")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how batches are made."""

    root: str = "data"
    """Dataset folder: one holding VOCdevkit/VOC2012, the VOC2012 folder itself, images/ + masks/ + classes.yaml (format=folder), an Arrow dataset (format=arrow), or the synthetic cache (format=synthetic)."""
    format: str = "voc"
    """Reader: voc (VOCdevkit), folder (your own images/ and masks/ with a classes.yaml; README "Your own data"), arrow (fcn-data prepare output), hub (any datasets image-segmentation set) or synthetic (generated on first use)."""
    download: bool = False
    """Download VOC2012 into data.root with torchvision's code when it is missing (needs network)."""
    train_split: str = "train"
    """Training split file name in ImageSets/Segmentation (train_aug reads SBD's SegmentationClassAug)."""
    val_split: str = "val"
    """Validation split name."""
    val_fraction: float = 0.1
    """format=folder without split files (splits/*.txt): the share of images in 'val', chosen by a hash of data.split_seed and each stem; the rest is 'train'."""
    split_seed: int = 0
    """format=folder without split files: the seed of that choice (same seed and stems, same split, on any machine)."""
    crop_size: list[int] = field(default_factory=lambda: [320, 480])
    """Training crop [H, W]."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    """Random rescale range [min, max] of the train preset (1.0 1.0 disables it)."""
    hflip: bool = True
    """Random horizontal flip in the train preset."""
    preset: str = "train"
    """Train transforms: train (scale, pad-with-void crop, flip; keeps every image) or d2l (plain 320x480 crop, drops smaller images, as the seed)."""
    resize_on: str = "loader"
    """Where the train preset's random rescale, padding and flip run: loader (workers, on uint8) or device (workers only cut each crop's source window; the training process finishes the batch on its device, so a GPU takes ~0.5 ms of CPU per image off the loader). Same pixels on CPU. No effect without a rescale (d2l preset, scale_range [1, 1])."""
    batch_size: int = 8
    """Images per process per optimizer micro-step."""
    eval_batch_size: int = 1
    """Images per process during validation (1 evaluates every image at exactly its own size)."""
    num_workers: int = 4
    """DataLoader worker processes per training process."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead (ignored when num_workers=0)."""
    pin_memory: bool = True
    """Pin host memory for faster, non-blocking copies to the GPU (ignored on CPU)."""
    hub_name: str = ""
    """format=hub: a dataset name or a local path (save_to_disk folder, parquet file or folder)."""
    hub_image_column: str = "image"
    """format=hub: the column holding images."""
    hub_mask_column: str = "mask"
    """format=hub: the column holding class-index masks."""
    classes: Optional[list[str]] = None
    """Class names; null means the 21 VOC classes (format=folder: the names of its classes.yaml, filled in by fcn-train)."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Largest image (or mask) accepted, width x height; a larger file is a data error naming it, found from its header before any pixel is decoded (default: Pillow's decompression-bomb limit)."""
    synthetic_train: int = 200
    """format=synthetic: number of generated training images."""
    synthetic_val: int = 40
    """format=synthetic: number of generated validation images."""
    synthetic_max_side: int = 500
    """format=synthetic: longest image side; sizes and orientations vary below it."""
    synthetic_seed: int = 0
    """format=synthetic: generator seed (same seed, same files)."""

    def __post_init__(self) -> None:
        _check_finite("data", self)
        _check_choice("data", "format", self.format, ("voc", "folder", "arrow", "hub", "synthetic"))
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be between 0 and 1 (exclusive)")
        _check_choice("data", "preset", self.preset, ("train", "d2l"))
        _check_choice("data", "resize_on", self.resize_on, ("loader", "device"))
        if len(self.crop_size) != 2 or min(self.crop_size) < 32:
            raise ConfigError(f"data.crop_size={list(self.crop_size)} must be [H, W] with both >= 32")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"data.scale_range={list(self.scale_range)} must be [min, max] with 0 < min <= max")
        for key in ("batch_size", "eval_batch_size", "prefetch_factor", "synthetic_max_side", "max_image_pixels"):
            _check_positive("data", key, getattr(self, key))
        for key in ("num_workers", "synthetic_train", "synthetic_val"):
            _check_positive("data", key, getattr(self, key), allow_zero=True)
        if self.format == "hub" and not self.hub_name:
            raise ConfigError("data.format=hub needs data.hub_name (a dataset name or a local path)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient handling."""

    name: str = "sgd"
    """Optimizer: sgd or adamw."""
    lr: float = 0.01
    """Peak learning rate (after warmup)."""
    momentum: float = 0.9
    """SGD momentum (0 for plain SGD, as d2l); AdamW uses it as beta1."""
    nesterov: bool = False
    """Nesterov momentum for SGD."""
    weight_decay: float = 1e-4
    """L2 weight decay (decoupled for AdamW)."""
    schedule: str = "poly"
    """LR schedule stepped per optimizer step: constant, poly or cosine."""
    poly_power: float = 0.9
    """Exponent of the poly schedule: lr * (1 - step / total) ** power."""
    warmup_steps: int = 0
    """Linear warmup from 0 over this many optimizer steps."""
    clip_grad_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    loss: str = "ce"
    """Training loss, fp32, void ignored, exact under sharding: ce (cross-entropy; without class weights divided by all pixels of the batch, with them PyTorch's weight= mean), dice (1 - soft Dice over the softmax, mean over the classes in the batch), ce+dice (their sum, weights 1 and 1) or focal (Lin et al., mean over labelled pixels)."""
    focal_gamma: float = 2.0
    """focal: the focusing exponent gamma of -(1 - p_t)^gamma log p_t (0 gives the weight= cross-entropy)."""
    class_weights: Any = "none"
    """Per-class loss weights: none, a list of model.num_classes numbers >= 0, or auto (ENet's 1 / ln(1.02 + p_c), p_c the class's share of the labelled pixels of data.train_split, as fcn-data stats suggests; resolved once and recorded in config.yaml, kept on resume)."""

    def __post_init__(self) -> None:
        _check_finite("optim", self)
        _check_choice("optim", "name", self.name, ("sgd", "adamw"))
        _check_choice("optim", "schedule", self.schedule, ("constant", "poly", "cosine"))
        _check_choice("optim", "loss", self.loss, LOSSES)
        _check_positive("optim", "lr", self.lr)
        for key in ("momentum", "weight_decay", "warmup_steps", "clip_grad_norm", "poly_power", "focal_gamma"):
            _check_positive("optim", key, getattr(self, key), allow_zero=True)
        object.__setattr__(self, "class_weights", _class_weights(self.class_weights))


@dataclass(frozen=True)
class TrainConfig:
    """Loop length, precision, checkpoints, evaluation and resume."""

    epochs: int = 5
    """Passes over the training set (train.max_steps stops earlier)."""
    max_steps: int = 0
    """Stop after this many optimizer steps, even mid-epoch; 0 means epochs decide."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Global batch = processes x data.batch_size x grad_accum; the per-process batch is what the config fixes."""
    mixed_precision: str = "auto"
    """Autocast precision: auto (CUDA: bf16, or fp16 without bf16 support; CPU: bf16 only where a short probe measures it faster than fp32, else no; a resumed run keeps its own), no, fp16 (with GradScaler) or bf16. The loss is always computed in fp32. The resolved value is what config.yaml records."""
    channels_last: bool = True
    """Run the network in channels_last memory format (faster on CPU and on tensor-core GPUs)."""
    compile: bool = False
    """torch.compile the model (exported weights keep clean names)."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm across processes (CUDA only, as torch's SyncBatchNorm)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str = ""
    """Run directory name under output_dir; empty means the config name, so a rerun resumes it."""
    resume: str = "auto"
    """auto (newest complete checkpoint of this run, if any), never (start over), or a checkpoint folder path."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N optimizer steps (also at each epoch end); 0 = epoch ends only."""
    keep_last: int = 3
    """Number of step checkpoints kept (older ones are deleted)."""
    eval_every: int = 0
    """Validate every N optimizer steps; 0 = at each epoch end only."""
    eval_mode: str = "whole"
    """Validation inference: whole (pad to a multiple of 32, then crop) or slide (tiles with averaged overlaps)."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    dist_timeout_s: int = 600
    """Seconds a process waits on the others before failing, so a dead rank never hangs the job."""

    def __post_init__(self) -> None:
        if self.mixed_precision in ("False", "false"):  # YAML 1.1 reads a bare `no` as a boolean
            object.__setattr__(self, "mixed_precision", "no")
        _check_choice("train", "mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
        _check_choice("train", "eval_mode", self.eval_mode, INFERENCE_MODES)
        _check_positive("train", "epochs", self.epochs)
        _check_positive("train", "grad_accum", self.grad_accum)
        _check_positive("train", "keep_last", self.keep_last)
        _check_positive("train", "dist_timeout_s", self.dist_timeout_s)
        for key in ("max_steps", "checkpoint_every", "eval_every"):
            _check_positive("train", key, getattr(self, key), allow_zero=True)
        if self.resume not in ("auto", "never") and not self.resume:
            raise ConfigError("train.resume must be auto, never or a checkpoint path")


LOG_MODEL = ("none", "best", "last", "all")


@dataclass(frozen=True)
class LogConfig:
    """Metrics: W&B (offline without a key or network) and the local metrics.jsonl."""

    wandb: bool = True
    """Log to Weights & Biases from the main process; wandb's own settings pick the mode (offline without credentials, never a prompt)."""
    project: str = "fcn_dist"
    """W&B project."""
    entity: str = ""
    """W&B entity (team or user); empty means your default."""
    group: str = ""
    """W&B group (runs that are parts of one experiment); empty means none, or WANDB_RUN_GROUP when set."""
    log_model: str = "none"
    """Upload exported models as W&B artifacts of type model: none, best (model_best), last (model_last) or all."""
    every: int = 10
    """Log training scalars every N optimizer steps (the only host syncs in the loop)."""
    num_images: int = 4
    """Validation examples (image, prediction, label) logged at each evaluation."""

    def __post_init__(self) -> None:
        _check_positive("log", "every", self.every)
        _check_positive("log", "num_images", self.num_images, allow_zero=True)
        _check_choice("log", "log_model", self.log_model, LOG_MODEL)


@dataclass(frozen=True)
class Config:
    """A whole run: model, data, optim, train and log sections."""

    name: str = "default"
    """Config name: a W&B tag and the default run name (set from the YAML file name)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        weights = self.optim.class_weights
        if isinstance(weights, list) and len(weights) != self.model.num_classes:
            raise ConfigError(f"optim.class_weights has {len(weights)} entries but model.num_classes="
                              f"{self.model.num_classes}: give one weight per class, or none, or auto")

    def run_dir(self) -> Path:
        """The run directory, ``<output_dir>/<run_name or name>``."""
        return Path(self.train.output_dir) / (self.train.run_name or self.name)


_SECTION_CLASSES = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "log": LogConfig,
}


def _valid_keys(full_key: str) -> str:
    section = full_key.split(".")[0]
    if section in _SECTION_CLASSES and "." in full_key:
        names = [f.name for f in dataclasses.fields(_SECTION_CLASSES[section])]
        return f"valid keys in '{section}': {', '.join(names)}"
    return f"valid top-level keys: name, {', '.join(_SECTION_CLASSES)}"


def _type_name(type_str: str) -> str:
    """``Optional[list[str]]`` -> ``list[str] or null`` (field types are strings here)."""
    if type_str == "Any":  # optim.class_weights, the only such field
        return "str or list[float]"
    if type_str.startswith("Optional[") and type_str.endswith("]"):
        return f"{type_str[len('Optional['):-1]} or null"
    return type_str


def _field_types(section: str) -> dict[str, str]:
    cls = _SECTION_CLASSES.get(section)
    return {f.name: str(f.type) for f in dataclasses.fields(cls)} if cls else {}


def _field_type(full_key: str) -> str:
    """The expected type of a key, for messages: ``float``, ``list[int]``, or an element's (``data.crop_size[0]``)."""
    key, bracket, _ = full_key.partition("[")
    if key == "name":
        return "str"
    section, _, name = key.partition(".")
    type_str = _field_types(section).get(name)
    if type_str is None:
        return "a value this key does not take"
    if bracket:  # an element of a list field: list[int] -> int
        inner = type_str.removeprefix("Optional[").removesuffix("]")
        return f"{inner.removeprefix('list[').removesuffix(']')} (each element of {_type_name(type_str)})"
    return _type_name(type_str)


def _friendly(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None)
    if not key:  # OmegaConf could not tell which key: say where and what, never '?'
        return ConfigError(f"bad value in {source}: {str(err).splitlines()[0]}")
    if isinstance(err, ConfigKeyError):
        return ConfigError(f"unknown config key '{key}' in {source}; {_valid_keys(key)}")
    if isinstance(err, ValidationError):
        return ConfigError(f"bad value for config key '{key}' in {source}: expected {_field_type(key)}, "
                           f"got {getattr(err, 'value', None)!r}")
    return ConfigError(f"config error at '{key}' in {source}: {str(err).splitlines()[0]}")


def _described(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def _check_shape(tree: dict, source: str) -> dict:
    """Refuse what OmegaConf cannot name a key for: a section that is not a mapping, a mapping for a list.

    A section given as null (a YAML ``model:`` with every key commented out) is an empty one.

    Returns:
        ``tree`` without its null sections.

    Raises:
        ConfigError: naming the key, what it expects and what it got.
    """
    tree = {key: value for key, value in tree.items() if not (key in _SECTION_CLASSES and value is None)}
    for key, value in tree.items():
        if key == "name" and isinstance(value, (dict, list)):
            raise ConfigError(f"bad value for config key 'name' in {source}: expected str, got {_described(value)}")
        if key not in _SECTION_CLASSES:
            continue  # an unknown top-level key: OmegaConf's merge names it
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for config key '{key}' in {source}: expected a mapping of {key}.* keys "
                              f"({_valid_keys(key + '.x').split(': ', 1)[1]}), got {_described(value)}")
        types = _field_types(key)
        for name, item in value.items():
            if isinstance(item, dict) and "list[" in types.get(name, ""):
                raise ConfigError(f"bad value for config key '{key}.{name}' in {source}: expected "
                                  f"{_field_type(f'{key}.{name}')}, got {_described(item)}")
    return tree


def _merge(base, other, source: str):
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _friendly(err, source) from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from defaults, an optional YAML file and dotted overrides.

    Args:
        path: YAML file with any subset of the sections; its stem becomes ``name`` unless set.
        overrides: strings like ``optim.lr=0.01`` or ``data.crop_size=[256,256]``.

    Returns:
        The frozen Config.

    Raises:
        ConfigError: missing/invalid file, unknown key, wrong type or invalid value.
    """
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"cannot parse YAML {path}: {problem}{where}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        loaded = _check_shape(loaded, str(path))
        loaded.setdefault("name", path.stem)
        cfg = _merge(cfg, loaded, str(path))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=0.01")
        key = item.split("=", 1)[0]
        if "." not in key and key != "name":
            raise ConfigError(f"override {item!r} must name section.key; {_valid_keys(key)}")
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as err:  # OmegaConf parses the value as YAML
            first = getattr(err, "problem", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise ConfigError(f"cannot parse the value of config key '{key}' in override {item!r}: {first}; "
                              f"write lists as {key}=[a,b] and quote values with spaces") from None
        source = f"override {item!r}"
        cfg = _merge(cfg, _check_shape(OmegaConf.to_container(dotlist), source), source)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _friendly(err, str(path) if path else "config") from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of a Config (for YAML, W&B and checkpoint metadata)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically; ``load_config`` reads it back equal."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


RESUME_MAY_CHANGE = {
    "name": "a label (a W&B tag); the run directory is what identifies the run",
    "train.epochs": "extends (or shortens) the run; the LR schedule is recomputed for the new length",
    "train.max_steps": "as train.epochs",
    "train.eval_every": "how often, not what, is evaluated",
    "train.checkpoint_every": "how often checkpoints are saved",
    "train.keep_last": "how many checkpoints are kept",
    "train.resume": "how this invocation finds its checkpoint",
    "train.output_dir": "where the run directory is; moving the folder keeps the run",
    "train.run_name": "as train.output_dir",
    "train.dist_timeout_s": "how long a process waits for the others",
    "train.compile": "speed only: the same model and step, compiled",
    "train.grad_accum": "allowed only where the global batch (processes x data.batch_size x grad_accum) stays the same",
    "data.num_workers": "loader speed; augmentations are seeded per sample, whatever the workers",
    "data.prefetch_factor": "loader speed",
    "data.pin_memory": "loader speed",
    "data.download": "whether a missing VOC is fetched",
    "data.eval_batch_size": "evaluation speed: images of one size share a pass, predictions are unchanged",
    "data.max_image_pixels": "which files are accepted, not how any accepted file is read",
    "log.every": "how often training scalars are logged",
    "log.wandb": "where metrics go, not what is trained",
    "log.project": "as log.wandb",
    "log.entity": "as log.wandb",
    "log.num_images": "how many validation examples are logged",
    "log.group": "how W&B groups runs in its charts, not what is trained",
    "log.log_model": "which exports are uploaded to W&B, not what is trained",
}
"""Config keys a resumed run may change, each with why that is safe (docs/DESIGN.md, "Run identity").

Every other key defines the experiment: a run directory continues only with the same values."""


def flat_dict(cfg: Config) -> dict[str, Any]:
    """A Config as ``{"section.key": value}`` (``name`` stays ``name``), lists for sequences."""
    flat: dict[str, Any] = {}
    for section, values in config_to_dict(cfg).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": list(v) if isinstance(v, tuple) else v for key, v in values.items()})
        else:
            flat[section] = values
    return flat


def config_fingerprint(cfg: Config) -> str:
    """16 hex digits of sha256 over the keys that define the experiment (all but ``RESUME_MAY_CHANGE``).

    Two runs share it exactly when a run directory would accept the other's config as a resume;
    exports record it (``fcn_dist.config_fingerprint``) so a model can be traced to its experiment.
    """
    import hashlib
    import json

    keys = {k: v for k, v in flat_dict(cfg).items() if k not in RESUME_MAY_CHANGE}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(old: Config, new: Config) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """What differs between a run's config and a new one, split by ``RESUME_MAY_CHANGE``.

    Returns:
        (experiment changes, allowed changes): each ``{key: (old value, new value)}``.
    """
    before, after = flat_dict(old), flat_dict(new)
    changed = {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)}
    refused = {k: v for k, v in changed.items() if k not in RESUME_MAY_CHANGE}
    allowed = {k: v for k, v in changed.items() if k in RESUME_MAY_CHANGE}
    return refused, allowed


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def config_reference() -> str:
    """Markdown reference of every config key: type, default and its docstring."""
    lines = []
    for section, cls in _SECTION_CLASSES.items():
        docs = _field_docs(cls)
        lines += [f"#### `{section}`: {inspect.getdoc(cls)}", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{section}.{f.name}` | {_type_name(str(f.type))} | `{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # python -m fcn_dist.config: print the reference that README.md embeds
    print(config_reference(), end="")

"""What a self-describing fcn_dist model says about itself, without torch.

The ``fcn_dist.*`` entries that ``checkpoint.export_model`` writes into a safetensors header, and
that ``fcn-export`` copies into an ONNX model's ``metadata_props``: ``model`` (the ``ModelConfig``),
``classes``, ``normalize`` (mean and std), ``step``, ``metrics``, ``trained_with`` and provenance
strings (docs/DESIGN.md, "Self-describing safetensors"). ``model_info`` validates them into a
``ModelInfo``; ``CheckpointError`` is how a model file that cannot be used is reported.

Pure Python, as ``config`` is: ``fcn-predict --onnx`` reads an ONNX model's metadata with it and
never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .config import ARCHS, BACKBONES, UPSAMPLES, ModelConfig
from .labels import IGNORE_INDEX

META_PREFIX = "fcn_dist."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and why."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a self-describing checkpoint says about its model."""

    model: ModelConfig
    classes: list[str]
    mean: list[float]
    std: list[float]
    step: int
    metrics: dict[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_field(meta: dict[str, str], key: str, default: str | None = None) -> Any:
    """One metadata field, parsed; ``ValueError`` naming it when it is missing or not JSON."""
    text = meta.get(META_PREFIX + key, default)
    if text is None:
        raise ValueError(f"{META_PREFIX}{key} is missing")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{META_PREFIX}{key} is not JSON: {text[:60]!r}") from None


def model_info(meta: dict[str, str]) -> ModelInfo:
    """The ModelInfo of a checkpoint's metadata, every ``fcn_dist.*`` field checked.

    ``model``: an object of exactly ``ModelConfig``'s fields with known ``arch``, ``backbone`` and
    ``upsample`` and an integer ``num_classes`` in 1..254; ``classes``: ``num_classes`` distinct
    strings; ``normalize``: ``mean`` and ``std``, 3 finite numbers each, ``std`` > 0; ``step``
    (optional): a whole number >= 0; ``metrics`` (optional): an object; ``trained_with``
    (optional): an object whose ``mixed_precision``, if any, is no, fp16 or bf16. Other
    ``fcn_dist.*`` keys are ignored.

    Raises:
        ValueError: naming the field and what is wrong with it.
    """
    model = _json_field(meta, "model")
    fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    if not isinstance(model, dict):
        raise ValueError(f"{META_PREFIX}model is a JSON {type(model).__name__}, not an object of {', '.join(fields)}")
    if set(model) != set(fields):
        missing, extra = sorted(set(fields) - set(model)), sorted(set(model) - set(fields))
        raise ValueError(f"{META_PREFIX}model has {'missing ' + ', '.join(missing) if missing else ''}"
                         f"{'; ' if missing and extra else ''}{'unknown ' + ', '.join(extra) if extra else ''} keys")
    for key, choices in (("arch", ARCHS), ("backbone", BACKBONES), ("upsample", UPSAMPLES)):
        if model[key] not in choices:
            raise ValueError(f"{META_PREFIX}model {key}={model[key]!r} is not one of {', '.join(choices)}")
    num_classes = model["num_classes"]
    if type(num_classes) is not int or not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"{META_PREFIX}model num_classes={num_classes!r} is not a whole number in 1..{IGNORE_INDEX}")
    if not isinstance(model["pretrained"], str):
        raise ValueError(f"{META_PREFIX}model pretrained={model['pretrained']!r} is not a string")
    classes = _json_field(meta, "classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        raise ValueError(f"{META_PREFIX}classes={classes!r} is not a list of class names")
    if len(classes) != num_classes:
        raise ValueError(f"{META_PREFIX}classes has {len(classes)} names but {META_PREFIX}model num_classes is "
                         f"{num_classes}: one name per class")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"{META_PREFIX}classes repeats {', '.join(map(repr, repeated))}: class names must differ")
    norm = _json_field(meta, "normalize")
    if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
        raise ValueError(f"{META_PREFIX}normalize={norm!r} is not an object of mean and std")
    for key in ("mean", "std"):
        values = norm[key]
        if not (isinstance(values, list) and len(values) == 3 and all(_is_number(v) for v in values)):
            raise ValueError(f"{META_PREFIX}normalize {key}={values!r} is not 3 finite numbers (one per RGB channel)")
    if min(norm["std"]) <= 0:
        raise ValueError(f"{META_PREFIX}normalize std={norm['std']!r} must be > 0 (inputs are divided by it)")
    step = meta.get(META_PREFIX + "step", "0")
    if not step.isdigit():
        raise ValueError(f"{META_PREFIX}step={step!r} is not a whole number >= 0")
    metrics = _json_field(meta, "metrics", "{}")
    if not isinstance(metrics, dict):
        raise ValueError(f"{META_PREFIX}metrics is a JSON {type(metrics).__name__}, not an object")
    trained_with = _json_field(meta, "trained_with", "{}")
    if not isinstance(trained_with, dict):
        raise ValueError(f"{META_PREFIX}trained_with is a JSON {type(trained_with).__name__}, not an object")
    if trained_with.get("mixed_precision", "no") not in ("no", "fp16", "bf16"):
        raise ValueError(f"{META_PREFIX}trained_with mixed_precision={trained_with['mixed_precision']!r} is not one "
                         "of no, fp16, bf16")
    return ModelInfo(model=ModelConfig(**{**model, "pretrained": "none"}), classes=classes, mean=norm["mean"],
                     std=norm["std"], step=int(step), metrics=metrics)

"""Checkpoints: run-directory layout, atomic resumable saves, and self-describing safetensors.

Two kinds of files:
- ``checkpoints/step_XXXXXXXX/``: Accelerate ``save_state`` (model safetensors, optimizer,
  RNG states), ``train_state.json`` (loop position, scheduler) and ``manifest.json`` (every
  file's size and xxh3-128, written last), for exact resume. Written to a temporary folder and
  renamed when complete. Resume verifies the manifest and loads pickles with
  ``weights_only=True`` only: nothing in a checkpoint folder can run code. A folder that fails
  is renamed ``corrupt-step_...`` and the previous one is used (docs/DESIGN.md, "Run identity").
- ``model_*.safetensors``: weights for others. The header metadata holds the model config,
  class names, normalisation, step and metrics, so ``load_model`` rebuilds the network with
  no training code and never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .config import ConfigError, ModelConfig
from .files import atomic_write, atomic_write_text, fsync_dir
from .metadata import META_PREFIX, CheckpointError, ModelInfo, model_info  # noqa: F401 (re-exported)
from .model import FCN

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def export_model(model: torch.nn.Module, path: str | os.PathLike, model_cfg: ModelConfig, classes: list[str],
                 mean: list[float], std: list[float], step: int = 0, metrics: dict | None = None,
                 trained_with: dict | None = None, provenance: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights as a self-describing safetensors file, atomically.

    Args:
        model: the (unwrapped) FCN; compiled models are unwrapped here too, so no
            ``_orig_mod.`` prefix reaches the file.
        path: destination ``.safetensors`` file.
        model_cfg, classes, mean, std, step, metrics: stored in the header metadata.
        trained_with: how the weights were trained (``{"mixed_precision": "bf16"}``), stored as
            ``fcn_dist.trained_with``.
        provenance: more header entries (``fcn_dist.`` is prefixed), strings: training writes
            ``config_fingerprint`` and ``wandb`` (docs/DESIGN.md, "Self-describing safetensors").

    Returns:
        The path written.
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    metadata = {
        META_PREFIX + "model": json.dumps(dataclasses.asdict(model_cfg)),
        META_PREFIX + "classes": json.dumps(list(classes)),
        META_PREFIX + "normalize": json.dumps({"mean": list(mean), "std": list(std)}),
        META_PREFIX + "step": str(int(step)),
        META_PREFIX + "metrics": json.dumps(metrics or {}),
        META_PREFIX + "trained_with": json.dumps(trained_with or {}),
        **{META_PREFIX + key: value for key, value in (provenance or {}).items()},
    }
    data = save(state, metadata=metadata)  # bytes: save_file would replace the file with a 0600 one
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {_io_reason(err)}; the previous file is intact") from None
    return path


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked to be well formed: tensor entries and metadata.

    The format (safetensors' README): 8 bytes little-endian header length N, N bytes of a JSON
    object mapping tensor names to ``{"dtype": str, "shape": [int, ...], "data_offsets": [begin,
    end]}`` (offsets into the data after the header) plus an optional ``"__metadata__"`` object
    of strings.

    Raises:
        CheckpointError: naming the file and the first malformed part.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header says {header_len} bytes, "
                                  f"file has {size})")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: a JSON {type(header).__name__}, not an object of "
                              "tensor entries; re-export the model")
    for name, entry in header.items():
        if name == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{path}: corrupt safetensors header: __metadata__ is not an object of strings")
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            problem = f"is a JSON {type(entry).__name__}, not a tensor entry"
        elif not isinstance(entry.get("dtype"), str):
            problem = "has no dtype"
        elif not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            problem = f"has shape {shape!r}, not a list of sizes"
        elif not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                  and 0 <= offsets[0] <= offsets[1]):
            problem = f"has data_offsets {offsets!r}, not [begin, end]"
        elif 8 + header_len + offsets[1] > size:
            raise CheckpointError(f"{path}: truncated safetensors file (tensor data ends at byte "
                                  f"{8 + header_len + offsets[1]}, file has {size}); re-export or copy it again")
        else:
            continue
        raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} {problem}; re-export the model")
    return header


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file, validated to be an fcn_dist export.

    Raises:
        CheckpointError: missing file, pickle format, truncated/corrupt file, or no fcn_dist metadata.
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints ({path.suffix}) are refused because loading them can run "
                              "arbitrary code; pass the model_*.safetensors file that training exports")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    metadata = _header(path).get("__metadata__") or {}
    if META_PREFIX + "model" not in metadata:
        raise CheckpointError(f"{path}: no fcn_dist metadata; it is not a model exported by fcn_dist "
                              "(use model_last.safetensors or model_best.safetensors from a run directory)")
    return metadata


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_weights(state: dict[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """Check a state dict against a model before it is loaded: names, shapes, dtypes and finite values.

    Args:
        state: the tensors read from the file.
        model: the network they are for.
        what: how the message calls the network (``fcn32s/resnet18 with 21 classes``).

    Raises:
        ValueError: naming the tensors (and both shapes) that do not fit, or the first non-finite one.
    """
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + \
                ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise ValueError(f"tensors do not match {what}: {'; '.join(parts)}")
    wrong = [f"{k} has shape {list(state[k].shape)}, the model's is {list(expected[k].shape)}"
             for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        raise ValueError(f"tensor {wrong[0]} ({what})" + (f"; {len(wrong) - 1} more differ" if len(wrong) > 1 else ""))
    for k in expected:
        if expected[k].is_floating_point() != state[k].is_floating_point():
            raise ValueError(f"tensor {k} is {state[k].dtype}, the model's is {expected[k].dtype}")
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        count = int((~torch.isfinite(state[bad[0]])).sum())
        raise ValueError(f"tensor {bad[0]} has {count} non-finite (NaN or inf) values"
                         + (f", and {len(bad) - 1} more tensors have some" if len(bad) > 1 else "")
                         + ": these weights cannot predict; export them again from a finite checkpoint")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FCN, ModelInfo]:
    """Rebuild an FCN from a self-describing safetensors file, without pickle or training config.

    Every metadata field is validated (``model_info``) and the tensors are checked against the
    network (``check_weights``) before anything is loaded into it.

    Returns:
        (model in eval mode on ``device``, ModelInfo with classes, normalisation and config).

    Raises:
        CheckpointError: see ``read_metadata``; also bad metadata (naming the field), tensors that
            do not fit the stored config (naming them and both shapes), non-finite weights.
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        info = model_info(meta)
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: bad fcn_dist metadata: {err}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors ({err})") from None
    model = FCN(info.model)
    cfg = info.model
    try:
        check_weights(state, model, f"{cfg.arch}/{cfg.backbone} with {cfg.num_classes} classes")
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


# Resumable checkpoints: the only part of this module that knows about processes.

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE_FILE = "train_state.json"
CORRUPT_PREFIX = "corrupt-"
_FORMAT = 1
_CHUNK = 1 << 22


@dataclasses.dataclass
class TrainState:
    """Loop position and run identity, saved as JSON in every checkpoint (``train_state.json``)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Per-process batches of this epoch already trained (at ``world_size`` processes)."""
    best_miou: float = -1.0
    best_step: int = -1
    """Step of the evaluation that gave ``best_miou`` (-1: none yet, or a checkpoint older than this field)."""
    wandb_run_id: str = ""
    last_eval: int = -1
    """Step of the latest evaluation (so the end of training does not repeat it)."""
    last_ckpt: int = -1
    """Step of the latest checkpoint."""
    world_size: int = 1
    """Processes that trained up to here; a resume on another count re-shards the epoch's rest."""
    grad_accum: int = 1
    """Gradient accumulation that trained up to here (``plan_resume`` keeps the global batch)."""


def _digest(path: Path) -> str:
    """xxh3-128 of a file (``xxhash`` comes with ``datasets``): ~10x sha256's speed, ample against corruption."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> Path:
    """List every file of a checkpoint folder with its size and xxh3-128; written last, atomically."""
    paths = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]
    files = {p.name: {"size": p.stat().st_size, "xxh3_128": _digest(p)} for p in paths}
    manifest = atomic_write_text(folder / MANIFEST, json.dumps({"format": _FORMAT, "files": files}, indent=1) + "\n")
    mode = manifest.stat().st_mode & 0o777  # the user's umask; safetensors writes its files 0600
    for path in paths:
        os.chmod(path, mode)
    return manifest


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with Accelerate's allow-list (numpy RNG state): never runs code."""
    from accelerate.utils import load

    return load(path, map_location="cpu", weights_only=True)


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check a checkpoint folder before anything of it is loaded into the run.

    The manifest first (every listed file present, of its size and hash), then every pickled
    file loaded with ``weights_only=True`` (a file whose unpickling would run code fails here,
    without running it), then the safetensors headers and the training state.

    Returns:
        The parsed ``train_state.json``: ``{"train_state": {...}, "scheduler": {...}}``.

    Raises:
        CheckpointError: the message names the file and what is wrong with it.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: missing (an incomplete checkpoint, or one saved before fcn_dist "
                              "0.2, whose state needs unpickling)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from None
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry.get("size"):
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry.get('size')} "
                                  "(truncated or replaced)")
        if _digest(path) != entry.get("xxh3_128"):
            raise CheckpointError(f"{path}: contents differ from the manifest's checksum (corrupt or replaced)")
    if STATE_FILE not in files:
        raise CheckpointError(f"{folder / STATE_FILE}: missing from the manifest")
    for name in sorted(files):
        path = folder / name
        try:
            if name.endswith(PICKLE_SUFFIXES):
                _safe_load(path)
            elif name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt") as f:
                    list(f.keys())
        except Exception as err:  # any failure to load is a bad file; which exception depends on the format
            raise CheckpointError(f"{path}: cannot be loaded safely ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
    try:
        saved = json.loads((folder / STATE_FILE).read_text())
        TrainState(**saved["train_state"])
        if not isinstance(saved["scheduler"], dict):
            raise TypeError("scheduler state is not a mapping")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: bad training state ({err})") from None
    return saved


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (``.tmp-*`` and ``corrupt-*`` folders are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def set_aside(folder: Path) -> Path:
    """Rename a bad checkpoint folder to ``corrupt-<name>`` (never deleted), a free name."""
    target = folder.with_name(CORRUPT_PREFIX + folder.name)
    k = 1
    while target.exists():
        k += 1
        target = folder.with_name(f"{CORRUPT_PREFIX}{folder.name}-{k}")
    os.replace(folder, target)
    return target


def find_resume_checkpoint(accelerator, run_dir: Path, resume: str,
                           warn: Callable[[str], None]) -> tuple[Path | None, dict[str, Any] | None]:
    """The verified checkpoint that ``train.resume`` asks for, and its training state.

    ``never``: none. A path: that folder, verified. ``auto``: the newest complete folder that
    verifies; each newer one that does not is renamed ``corrupt-step_...`` by the main process
    (``warn`` tells why) and the previous one is tried. Every process verifies the same folders,
    so all reach the same answer.

    Returns:
        (folder or None, its ``train_state.json`` or None).

    Raises:
        CheckpointError: the given path is bad (naming the file), or checkpoints exist and none
            is usable (listing each folder and why).
    """
    if resume == "never":
        return None, None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"train.resume={resume}: not a checkpoint folder (expected "
                                  f"{run_dir}/{CHECKPOINTS}/step_XXXXXXXX)")
        return path, verify_checkpoint(path)
    failures = []
    for folder in reversed(complete_checkpoints(run_dir)):
        try:
            saved = verify_checkpoint(folder)
        except CheckpointError as err:
            failures.append(f"{folder.name}: {err}")
            accelerator.wait_for_everyone()  # every process has read it before it moves
            if accelerator.is_main_process:
                moved = set_aside(folder)
                warn(f"checkpoint {folder} is unusable ({err}); set aside as {moved.name}")
            accelerator.wait_for_everyone()
            continue
        return folder, saved
    if failures:
        raise CheckpointError(f"no usable checkpoint in {run_dir / CHECKPOINTS} (each set aside as corrupt-*): "
                              + "; ".join(failures))
    return None, None


def save_checkpoint(accelerator, run_dir: Path, step: int, keep_last: int, saved: dict[str, Any]) -> Path:
    """Accelerate ``save_state`` plus ``train_state.json`` and the manifest, in a temporary folder
    renamed when complete; keeps the last K.

    Every process must call this (each saves its own RNG state). ``saved`` is the JSON training
    state (``{"train_state": ..., "scheduler": ...}``), written by the main process.

    Raises:
        CheckpointError: the disk is full or not writable (the message names the folder); the
            temporary folder is removed and the previous checkpoint stays the newest.
    """
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp-step_{step:08d}"
    try:
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_text(tmp / STATE_FILE, json.dumps(saved, indent=1) + "\n")
            write_manifest(tmp)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as RuntimeError
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot save checkpoint {final}: {_io_reason(err)}; free space (or fix "
                              "permissions) and rerun the same command: it resumes from the previous checkpoint"
                              ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved twice (e.g. step and epoch end coincide)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(folder)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _io_reason(err: BaseException) -> str:
    """One line for an I/O failure: the OS's words (and the file), or the first line of the message."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}" + (f" ({err.filename})" if err.filename else "")
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def load_checkpoint(accelerator, folder: Path, saved: dict[str, Any], scheduler, state: TrainState) -> None:
    """Load a verified checkpoint into the run: Accelerate's state, then the scheduler and ``state``.

    Raises:
        CheckpointError: the state does not fit this run's model or optimizer (names the folder).
    """
    try:
        accelerator.load_state(str(folder))
        scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{folder}: does not fit this run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    for key, value in saved["train_state"].items():
        setattr(state, key, value)


def train_state_json(state: TrainState, scheduler) -> dict[str, Any]:
    """What ``train_state.json`` holds: the loop state and the LR scheduler's state, all plain JSON."""
    return {"train_state": dataclasses.asdict(state), "scheduler": scheduler.state_dict()}


# Run identity: one run directory is one experiment (docs/DESIGN.md, "Run identity").

RUN_CONFIG = "config.yaml"
RESUMES = "resumes.jsonl"


def _run_config_value(run_dir: Path, section: str, key: str) -> Any:
    """``section.key`` of the config.yaml of a run that has checkpoints, else None (also when unreadable:
    ``check_run_identity`` names the unreadable file)."""
    import yaml

    path = Path(run_dir) / RUN_CONFIG
    if not complete_checkpoints(run_dir) or not path.is_file():
        return None
    try:
        return (yaml.safe_load(path.read_text()) or {}).get(section, {}).get(key)
    except (yaml.YAMLError, AttributeError):
        return None


def run_precision(run_dir: Path) -> str | None:
    """The resolved ``train.mixed_precision`` of a run that has checkpoints (its config.yaml), else None."""
    value = _run_config_value(run_dir, "train", "mixed_precision")
    value = "no" if value is False else value  # YAML 1.1 reads a bare `no` as false
    return value if value in ("no", "fp16", "bf16") else None


def run_class_weights(run_dir: Path) -> list[float] | None:
    """The resolved ``optim.class_weights`` (a list) of a run that has checkpoints (its config.yaml), else None."""
    value = _run_config_value(run_dir, "optim", "class_weights")
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in value):
        return [float(v) for v in value]
    return None


def free_run_name(run_dir: Path) -> str:
    """The first ``<name>-2``, ``<name>-3``, ... that does not exist beside ``run_dir``."""
    k = 2
    while (run_dir.parent / f"{run_dir.name}-{k}").exists():
        k += 1
    return f"{run_dir.name}-{k}"


def check_run_identity(cfg, run_dir: Path) -> tuple[Any, dict[str, tuple]]:
    """Compare a config with the run directory's ``config.yaml``, before anything in it is written.

    Only a run with checkpoints is compared (a run that never saved one has nothing to continue).

    Returns:
        (the run's saved Config or None, the allowed changes ``{key: (old, new)}``).

    Raises:
        ConfigError: keys that define the experiment differ; the message names each with its old
            and new value, and the ways out (a free ``train.run_name``, or the old values).
    """
    from .config import config_changes, load_config

    path = Path(run_dir) / RUN_CONFIG
    if cfg.train.resume == "never" or not complete_checkpoints(run_dir) or not path.is_file():
        return None, {}
    try:
        previous = load_config(path)
    except ConfigError as err:
        raise ConfigError(f"{path} cannot be read to compare with this run ({err}); continue it with the fcn_dist "
                          f"version that wrote it, or start a new run with train.run_name={free_run_name(run_dir)}"
                          ) from None
    refused, allowed = config_changes(previous, cfg)
    if refused:
        diffs = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(f"{run_dir} is another experiment ({diffs}); start a new run beside it with "
                          f"train.run_name={free_run_name(run_dir)}, or continue this one with its old values "
                          f"(see {path})")
    for key in ("train.resume", "train.output_dir", "train.run_name"):  # how this invocation finds the run
        allowed.pop(key, None)
    return previous, allowed


def record_resume(run_dir: Path, step: int, changes: dict[str, tuple], notes: tuple[str, ...]) -> None:
    """Append what a resume changed (allowed keys, process count) to ``resumes.jsonl``, atomically."""
    import datetime

    path = Path(run_dir) / RESUMES
    row = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "changes": {key: [old, new] for key, (old, new) in changes.items()}, "notes": list(notes)}
    before = path.read_text() if path.is_file() else ""
    atomic_write_text(path, before + json.dumps(row) + "\n")


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """How a run saved on N processes continues on M (``plan_resume``)."""

    grad_accum: int
    """Gradient accumulation to use from now on."""
    skip_batches: int
    """Per-process batches of the current epoch to skip at M processes."""
    notes: tuple[str, ...] = ()
    """What changed and why, one line each (printed and recorded in ``resumes.jsonl``)."""


def plan_resume(saved_world: int, saved_accum: int, saved_batches: int, world: int, accum: int,
                batch_size: int, accum_from_user: bool) -> ResumePlan:
    """Continue at the same point of the epoch's global sample order on another process count.

    Accelerate's seedable sampler gives every process count the same global order of batches
    of ``batch_size``; process ``r`` of ``N`` takes batches ``r, r + N, ...``. A run that trained
    ``b`` per-process batches on N processes consumed the first ``b * N`` of them, so M processes
    skip ``b * N / M`` each, which must be whole. The global batch ``N * B * accum`` is kept by
    setting the accumulation to ``N * accum / M`` when that is whole; otherwise the user's
    accumulation stays and the global batch changes, with a note.

    Args:
        saved_world, saved_accum, saved_batches: processes, accumulation and per-process batches
            of the epoch at the checkpoint.
        world, accum: this run's processes and configured accumulation.
        batch_size: ``data.batch_size`` (per process; the same in both).
        accum_from_user: the user changed ``train.grad_accum`` for this resume.

    Raises:
        ConfigError: the same processes and another accumulation (the global batch would change),
            or a point of the epoch that M processes cannot split evenly.
    """
    old_global = saved_world * batch_size * saved_accum
    notes = []
    if world == saved_world:
        if accum != saved_accum:
            raise ConfigError(f"train.grad_accum: {saved_accum} -> {accum} on the same {world} process(es) changes "
                              f"the global batch from {old_global} to {world * batch_size * accum}; keep "
                              f"train.grad_accum={saved_accum}, or start a new run")
    elif world * batch_size * accum != old_global:
        if not accum_from_user and (saved_world * saved_accum) % world == 0:
            accum = saved_world * saved_accum // world
            notes.append(f"train.grad_accum {saved_accum} -> {accum}: {saved_world} -> {world} processes keep the "
                         f"global batch of {old_global}")
        else:
            notes.append(f"warning: the global batch changes from {old_global} ({saved_world} x {batch_size} x "
                         f"{saved_accum}) to {world * batch_size * accum} ({world} x {batch_size} x {accum}): "
                         f"{saved_world} x {saved_accum} is not a multiple of {world} processes")
    consumed = saved_batches * saved_world
    if consumed % world:
        raise ConfigError(f"the checkpoint stopped after {consumed} batches of its epoch, which {world} processes "
                          f"cannot split evenly; resume on {saved_world} process(es) (or a divisor of {consumed}), "
                          "or from a checkpoint at an epoch end")
    if world != saved_world:
        notes.append(f"{saved_world} -> {world} processes: the epoch continues after its first {consumed} batches "
                     f"({consumed // world} per process)")
    return ResumePlan(accum, consumed // world, tuple(notes))

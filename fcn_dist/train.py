"""Train an FCN with Accelerate: one CPU, one GPU, N GPUs or N nodes, the same code.

    accelerate launch fcn_dist/train.py --config configs/demo.yaml [section.key=value ...]
    accelerate launch -m fcn_dist.train --config configs/demo.yaml
    python -m fcn_dist.train --config configs/demo.yaml        # or: fcn-train --config ...
    torchrun --nproc_per_node 2 -m fcn_dist.train --config configs/demo.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m fcn_dist.train ...  # CPU, gloo

Reads top to bottom: config, Accelerator, data, model, optimizer, resume, loop. Exit codes:
0 done, 2 bad config or input, 3 non-finite loss, 75 (EX_TEMPFAIL) stopped by SIGUSR1/SIGTERM
after saving a checkpoint: requeue and rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from fcn_dist.checkpoint import (CheckpointError, TrainState, complete_checkpoints, export_model,
                                 find_resume_checkpoint, save_checkpoint)
from fcn_dist.config import ConfigError, config_reference, load_config, save_config
from fcn_dist.data import build_dataloaders, class_names
from fcn_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, finish_windows, normalize
from fcn_dist.data.voc import DataError
from fcn_dist.evaluate import evaluate, write_eval_files
from fcn_dist.model import PretrainedWeightsError, build_model
from fcn_dist.optim import build_optimizer, build_scheduler, segmentation_loss
from fcn_dist.tracking import MetricsLog, flat_config, val_scalars, wandb_init_kwargs, wandb_media

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class _StopFlag:
    """Set by SIGUSR1/SIGTERM; the loop checks it at step boundaries, in step on every process."""

    def __init__(self):
        self.signum = 0
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._set)

    def _set(self, signum, frame):
        self.signum = signum


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fcn-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__, epilog="Config keys (section.key=value overrides): run "
        "`fcn-train --print-config-reference` or see README.md#configuration.")
    parser.add_argument("--config", help="YAML config file (e.g. configs/demo.yaml); defaults only if omitted")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides applied after the YAML, e.g. optim.lr=0.01 train.max_steps=100")
    parser.add_argument("--print-config-reference", action="store_true",
                        help="print every config key with its type, default and meaning, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_config_reference:
        print(config_reference(), end="")
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"fcn-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = cfg.run_dir()

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="wandb" if cfg.log.wandb else None,
        project_dir=str(run_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cfg.data.pin_memory),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))])
    # newline inside, one write: print writes `end` apart, and unbuffered ranks' lines then interleave
    print(f"fcn_dist process rank={accelerator.process_index} world_size={accelerator.num_processes} "
          f"local_rank={accelerator.local_process_index} host={socket.gethostname()}\n", end="", flush=True)
    stop = _StopFlag()
    try:
        return _train(cfg, accelerator, stop)
    except (ConfigError, DataError, CheckpointError, PretrainedWeightsError) as err:
        print(f"fcn-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as err:
        print(f"fcn-train: error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    finally:
        _end(accelerator, stop)


def _end(accelerator: Accelerator, stop: _StopFlag) -> None:
    """Finish W&B and destroy the process group (gloo aborts at exit otherwise)."""
    try:
        accelerator.end_training()
    except ConnectionError as err:
        if stop.signum != signal.SIGTERM:
            raise
        # A job-wide SIGTERM (scancel, time limit) also stops wandb's service process.
        print(f"fcn-train: warning: W&B run not finished ({err}); metrics.jsonl holds every logged row and "
              "a resumed run continues the same W&B run", file=sys.stderr)
        accelerator.state.destroy_process_group()


def _train(cfg, accelerator: Accelerator, stop: _StopFlag) -> int:
    run_dir = cfg.run_dir()
    if cfg.train.resume == "never" and complete_checkpoints(run_dir):  # before anything in it is touched
        raise CheckpointError(f"{run_dir} already holds checkpoints and train.resume=never: use train.resume=auto "
                              "to continue it, or a new train.run_name / train.output_dir")
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    torch.backends.cudnn.benchmark = True

    with accelerator.main_process_first():  # the main process generates synthetic data first
        train_loader, val_loader = build_dataloaders(cfg)
    classes, mean, std = class_names(cfg.data), IMAGENET_MEAN, IMAGENET_STD

    model = build_model(cfg.model)
    if cfg.train.sync_bn and accelerator.num_processes > 1:
        if accelerator.device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA (torch's SyncBatchNorm only runs on GPU modules); "
                              "set train.sync_bn=false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(cfg.optim, model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)  # Accelerate syncs at epoch end
    if steps_per_epoch == 0:
        raise DataError(f"the training set gives no full batch of {cfg.data.batch_size} per process on "
                        f"{accelerator.num_processes} processes: lower data.batch_size or add images")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Not prepared: Accelerate would step it once per process. Registered so it is checkpointed.
    scheduler = build_scheduler(cfg.optim, optimizer, total_steps)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)

    resume_from = find_resume_checkpoint(run_dir, cfg.train.resume)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}, "
                          f"batch {state.batch_in_epoch})")
    if cfg.log.wandb:
        accelerator.init_trackers(cfg.log.project, config=flat_config(cfg),
                                  init_kwargs={"wandb": wandb_init_kwargs(cfg, run_dir, state.wandb_run_id)})
        if accelerator.is_main_process:
            state.wandb_run_id = accelerator.get_tracker("wandb", unwrap=True).id
    # Rows logged after the checkpoint we resume from are dropped: they are about to be logged again.
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", keep_until=state.step) if accelerator.is_main_process else None

    def log(row: dict) -> None:
        row = {"step": state.step, "epoch": state.epoch, **row}
        if metrics_log is not None:
            metrics_log.write({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
        if stop.signum != signal.SIGTERM:  # a job-wide SIGTERM also stopped wandb's service process
            accelerator.log({k: v for k, v in row.items() if k not in ("step", "epoch")}, step=state.step)

    def run_eval() -> None:
        result = evaluate(model, val_loader, accelerator, cfg.model.num_classes, mean, std,
                          mode=cfg.train.eval_mode, num_examples=cfg.log.num_images if cfg.log.wandb else 0,
                          classes=classes)
        row = val_scalars(result.metrics, classes)
        if cfg.log.wandb and accelerator.is_main_process and stop.signum != signal.SIGTERM:
            row.update(wandb_media(result.examples, result.confusion, classes))
        log(row)
        if accelerator.is_main_process:
            write_eval_files({**result.metrics, "checkpoint": f"step {state.step}", "split": cfg.data.val_split},
                             run_dir / "eval" / f"step_{state.step:08d}.json")
            if result.metrics["mIoU"] > state.best_miou:
                state.best_miou = result.metrics["mIoU"]
                export(run_dir / "model_best.safetensors", result.metrics)

    def export(path, metrics: dict | None = None) -> None:
        export_model(accelerator.unwrap_model(model), path, cfg.model, classes, mean, std, state.step, metrics)

    def checkpoint() -> None:
        save_checkpoint(accelerator, run_dir, state.step, cfg.train.keep_last)
        if accelerator.is_main_process:
            export(run_dir / "model_last.safetensors")

    def check_finite(loss_sum: torch.Tensor, first_bad: torch.Tensor) -> None:
        bad = int(accelerator.reduce(first_bad.clone(), "max"))
        if bad >= 0 or not math.isfinite(float(loss_sum)):
            raise NonFiniteLossError(f"non-finite loss at step {max(bad, state.step)}; the last checkpoint in "
                                     f"{run_dir}/checkpoints is intact (lower optim.lr or try "
                                     "train.mixed_precision=bf16/no)")

    def stop_requested() -> bool:
        """All processes agree, so they stop at the same step (one tiny all-reduce, at log steps only)."""
        if accelerator.num_processes == 1:
            return stop.signum != 0
        flag = torch.tensor(float(stop.signum), device=accelerator.device)
        return float(accelerator.reduce(flag, "max")) > 0

    def is_boundary(step: int) -> bool:
        return step % cfg.log.every == 0 or step == total_steps

    progress = tqdm(total=total_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)
    model.train()
    # Device-side accumulators: the loop never syncs with the host except at log steps.
    loss_sum = torch.zeros((), device=accelerator.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    window_start, window_batches, last_eval, last_ckpt = time.perf_counter(), 0, -1, -1
    while state.step < total_steps:
        train_loader.set_epoch(state.epoch)
        train_loader.dataset.set_epoch(state.epoch)  # Accelerate skips the dataset when the sampler has set_epoch
        batches = (accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
                   if state.batch_in_epoch else train_loader)
        for images, masks, *windows in batches:
            if windows:  # data.resize_on=device: the loader cut source windows; resize, pad and flip here
                images, masks = finish_windows(images, masks, *windows)
            with accelerator.accumulate(model):
                images = normalize(images, mean, std).contiguous(memory_format=memory_format)
                loss = segmentation_loss(model(images), masks)
                accelerator.backward(loss)
                if accelerator.sync_gradients and (cfg.optim.clip_grad_norm or is_boundary(state.step + 1)):
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            window_batches += 1
            loss_sum += loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), state.step + 1, first_bad)
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
                scheduler.step()
            state.step += 1
            progress.update(1)
            if is_boundary(state.step):
                check_finite(loss_sum, first_bad)
                mean_loss = float(accelerator.reduce(loss_sum, "mean")) / window_batches
                images_per_sec = window_batches * cfg.data.batch_size * accelerator.num_processes / (
                    time.perf_counter() - window_start)
                log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0],
                     "train/grad_norm": float(grad_norm), "train/images_per_sec": images_per_sec,
                     **({"train/max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
                        if torch.cuda.is_available() else {})})
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                loss_sum.zero_()
                window_start, window_batches = time.perf_counter(), 0
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
                run_eval()
                last_eval = state.step
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                check_finite(loss_sum, first_bad)
                checkpoint()
                last_ckpt = state.step
            if is_boundary(state.step) and stop_requested():
                if last_ckpt != state.step:
                    check_finite(loss_sum, first_bad)
                    checkpoint()
                accelerator.print(f"stopped by signal {stop.signum} at step {state.step}: checkpoint saved; "
                                  f"exit {EXIT_PREEMPTED}, rerun the same command to resume")
                return EXIT_PREEMPTED
            if state.step >= total_steps:
                break
        else:  # the epoch ran to its end
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if not cfg.train.eval_every:
                run_eval()
                last_eval = state.step
            check_finite(loss_sum, first_bad)
            checkpoint()
            last_ckpt = state.step
    progress.close()
    if last_eval != state.step:
        run_eval()
    if last_ckpt != state.step:
        check_finite(loss_sum, first_bad)
        checkpoint()
    if metrics_log is not None:
        metrics_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train an FCN with Accelerate: one CPU, one GPU, N GPUs or N nodes, the same code.

    accelerate launch fcn_dist/train.py --config configs/demo.yaml [section.key=value ...]
    accelerate launch -m fcn_dist.train --config configs/demo.yaml
    python -m fcn_dist.train --config configs/demo.yaml        # or: fcn-train --config ...
    torchrun --nproc_per_node 2 -m fcn_dist.train --config configs/demo.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m fcn_dist.train ...  # CPU, gloo

``run(cfg)`` reads top to bottom: Accelerator, data, model, optimizer, resume, loop. The step
itself is ``fcn_dist.engine.train_step``; ``Outputs`` owns everything the loop writes (log rows,
evaluations, checkpoints, exports) and checks finiteness before any weights are written. Exit
codes (``fcn_dist.process``): 0 done, 2 bad config or input, 3 non-finite loss or weights, 75
(EX_TEMPFAIL) stopped by SIGUSR1/SIGTERM after saving a checkpoint: rerun the same command to
resume. The stop flag is read after every optimizer step (docs/DESIGN.md, "Stopping").
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import sys
import time
from datetime import timedelta

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from fcn_dist.checkpoint import (RUN_CONFIG, CheckpointError, TrainState, check_run_identity, complete_checkpoints,
                                 export_model, find_resume_checkpoint, free_run_name, load_checkpoint, plan_resume,
                                 record_resume, run_class_weights, run_precision, save_checkpoint, train_state_json)
from fcn_dist.cli import bad_input_errors, train_main
from fcn_dist.config import ConfigError, config_fingerprint, save_config
from fcn_dist.data import build_dataloaders, build_reader
from fcn_dist.data.stats import WEIGHTS_FORMULA, count_classes, enet_weights
from fcn_dist.data.voc import DataError
from fcn_dist.engine import train_step
from fcn_dist.evaluate import evaluate, write_eval_files
from fcn_dist.folderfiles import resolve_classes
from fcn_dist.labels import class_names
from fcn_dist.losses import Shards, build_loss
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from fcn_dist.optim import build_optimizer, build_scheduler
from fcn_dist.precision import PRECISIONS, PrecisionChoice, resolve_precision
from fcn_dist.process import (EXIT_LOST_PEER, EXIT_NONFINITE, EXIT_PREEMPTED, StopFlag, fail, loader_worker_init,
                              lost_peer, main_process_choice, main_process_floats, peer_reason)
from fcn_dist.tracking import (BEST_KEY, STEP_KEY, MetricsLog, console, eval_line, eval_tables, example_images, finish_wandb,
                               flat_config, log_model_artifact, model_source, progress_options, run_facts,
                               run_location, start_wandb, summary_lines, val_scalars, wandb_init_kwargs)


class NonFiniteError(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


def main(argv: list[str] | None = None) -> int:
    """``python -m fcn_dist.train`` / ``accelerate launch fcn_dist/train.py``: as ``fcn-train``."""
    return train_main(argv)


def run(cfg) -> int:
    """Train the run of a validated Config; returns the exit code."""
    # The process group first, so that every process can take the main process's precision choice.
    processes = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    cfg, choice = _choose_precision(cfg, processes)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        project_dir=str(cfg.run_dir()),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cfg.data.pin_memory),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))])
    # newline inside, one write: print writes `end` apart, and unbuffered ranks' lines then interleave
    print(f"fcn_dist process rank={accelerator.process_index} world_size={accelerator.num_processes} "
          f"local_rank={accelerator.local_process_index} host={socket.gethostname()}\n", end="", flush=True)
    accelerator.print(f"mixed precision: {choice.precision} ({choice.reason})")
    stop = StopFlag()
    try:
        return _train(cfg, accelerator, stop)
    except bad_input_errors() as err:
        return fail("fcn-train", err)
    except NonFiniteError as err:
        return fail("fcn-train", err, EXIT_NONFINITE)
    except RuntimeError as err:
        if not lost_peer(err, accelerator.num_processes):
            raise
        # The process that ended printed its own error first; a traceback here would bury it.
        return fail("fcn-train", f"process {accelerator.process_index} of {accelerator.num_processes} stopped: "
                                 f"another process ended; its error comes first in the log ({peer_reason(err)})",
                    EXIT_LOST_PEER)
    finally:
        _end(accelerator, stop)


def _choose_precision(cfg, processes: PartialState):
    """``train.mixed_precision=auto`` resolved once, by the main process: the run's own precision
    when it is resumed (its config.yaml), else ``resolve_precision``'s measurement."""
    requested = cfg.train.mixed_precision
    choice = PrecisionChoice(requested, "set explicitly")
    if requested == "auto":
        previous = run_precision(cfg.run_dir())
        if previous is not None:
            choice = PrecisionChoice(previous, f"auto: kept from {cfg.run_dir() / RUN_CONFIG}")
        elif processes.is_main_process:
            choice = resolve_precision("auto", processes.device.type, training=True)
        chosen = main_process_choice(processes, choice.precision, PRECISIONS)
        if chosen != choice.precision:
            choice = PrecisionChoice(chosen, "auto: the main process's choice")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=choice.precision))
    return cfg, choice


def loss_shards(accelerator: Accelerator) -> Shards:
    """What the losses know of the process group (``fcn_dist.losses``): N, and a sum over processes."""
    if accelerator.num_processes == 1:
        return Shards()
    return Shards(accelerator.num_processes, lambda tensor: accelerator.reduce(tensor, reduction="sum"))


def _resolve_class_weights(cfg, accelerator: Accelerator):
    """``optim.class_weights=auto`` resolved once: a resumed run's own weights (its config.yaml), else
    ``WEIGHTS_FORMULA`` over the pixel counts of ``data.train_split``, counted by the main process
    (as ``fcn-data stats``) and broadcast. The list is what config.yaml and W&B record."""
    if cfg.optim.class_weights != "auto":
        return cfg
    num_classes = cfg.model.num_classes
    weights, how = run_class_weights(cfg.run_dir()), f"kept from {cfg.run_dir() / RUN_CONFIG}"
    if weights is None:
        how = f"{WEIGHTS_FORMULA}, over split {cfg.data.train_split!r}"
        if accelerator.is_main_process:
            counts = count_classes(build_reader(cfg.data, cfg.data.train_split), num_classes,
                                   cfg.data.num_workers, loader_worker_init(), desc="class weights")
            if not counts.labelled:
                raise DataError(f"split {cfg.data.train_split!r} of {cfg.data.root} has no labelled pixel: "
                                "optim.class_weights=auto has nothing to weigh; set optim.class_weights=none")
            weights = enet_weights(counts.pixels)
        weights = main_process_floats(accelerator, weights, num_classes)
    accelerator.print(f"class weights (auto: {how}): [{', '.join(f'{w:.4f}' for w in weights)}]")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, class_weights=weights))


def _end(accelerator: Accelerator, stop: StopFlag) -> None:
    """Finish W&B and destroy the process group (gloo aborts at exit otherwise)."""
    try:
        finish_wandb()
    except ConnectionError as err:
        if not stop.terminated:
            raise
        # A job-wide SIGTERM (scancel, time limit) also stops wandb's service process.
        print(f"fcn-train: warning: W&B run not finished ({err}); metrics.jsonl holds every logged row and "
              "a resumed run continues the same W&B run", file=sys.stderr)
        import wandb

        try:  # also unregisters wandb's atexit teardown, which would print this error's traceback at exit
            wandb.teardown()
        except ConnectionError:
            pass
    accelerator.end_training()


def _train(cfg, accelerator: Accelerator, stop: StopFlag) -> int:
    cfg = resolve_classes(cfg)  # a folder set's classes.yaml names its classes: config.yaml and exports record them
    run_dir = cfg.run_dir()
    if cfg.train.resume == "never" and complete_checkpoints(run_dir):  # before anything in it is touched
        raise CheckpointError(f"{run_dir} already holds checkpoints and train.resume=never: use train.resume=auto "
                              f"to continue it, or a new run beside it: train.run_name={free_run_name(run_dir)}")
    cfg = _resolve_class_weights(cfg, accelerator)
    _, changes = check_run_identity(cfg, run_dir)  # exit 2 before anything in the run directory is written
    set_seed(cfg.train.seed)
    torch.backends.cudnn.benchmark = True

    with accelerator.main_process_first():  # the main process generates synthetic data first
        train_loader, val_loader = build_dataloaders(cfg, loader_worker_init())
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
    loss_fn = build_loss(cfg.optim, cfg.model.num_classes, accelerator.device, loss_shards(accelerator))
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    cfg, folder, saved, plan = _find_resume(cfg, accelerator, run_dir, changes)

    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)  # Accelerate syncs at epoch end
    if steps_per_epoch == 0:
        raise DataError(f"the training set gives no full batch of {cfg.data.batch_size} per process on "
                        f"{accelerator.num_processes} processes: lower data.batch_size or add images")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Not prepared: Accelerate would step it once per process. Saved in train_state.json.
    scheduler = build_scheduler(cfg.optim, optimizer, total_steps)
    state = TrainState(world_size=accelerator.num_processes, grad_accum=cfg.train.grad_accum)
    if saved is not None:
        if saved["train_state"]["step"] >= total_steps:
            return _report_complete(accelerator, run_dir, saved["train_state"], total_steps)
        load_checkpoint(accelerator, folder, saved, scheduler, state)
        state.world_size, state.grad_accum = accelerator.num_processes, cfg.train.grad_accum
        state.batch_in_epoch, accelerator.step = plan.skip_batches, 0  # resumed at an optimizer step
        accelerator.print(f"resumed from {folder} at step {state.step} (epoch {state.epoch}, "
                          f"batch {state.batch_in_epoch})" + "".join(f"\n  {note}" for note in plan.notes))
    if accelerator.is_main_process:
        save_config(cfg, run_dir / RUN_CONFIG)
        if saved is not None and (changes or plan.notes):
            record_resume(run_dir, state.step, changes, plan.notes)
    wandb_config = None  # the resolved config, what a resume changed, and derived facts
    if cfg.log.wandb and accelerator.is_main_process:
        wandb_config = {**flat_config(cfg), **{f"resume/{key}": f"{old} -> {new}" for key, (old, new) in changes.items()},
                        **run_facts(cfg, accelerator.num_processes, steps_per_epoch, total_steps,
                                    sum(p.numel() for p in model.parameters()),
                                    {"train": len(train_loader.dataset), "val": len(val_loader.dataset)})}
    out = Outputs(cfg, accelerator, model, scheduler, val_loader, state, stop, wandb_config)

    def is_boundary(step: int) -> bool:
        return step % cfg.log.every == 0 or step == total_steps

    # a context, so the bar is closed before an error line is printed
    with tqdm(total=total_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process,
              **progress_options()) as progress:
        model.train()
        while state.step < total_steps:
            train_loader.set_epoch(state.epoch)
            train_loader.dataset.set_epoch(state.epoch)  # Accelerate skips the dataset when the sampler has set_epoch
            batches = (accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
                       if state.batch_in_epoch else train_loader)
            for batch in out.timed(batches):
                with accelerator.accumulate(model):
                    clip = None
                    if accelerator.sync_gradients and (cfg.optim.clip_grad_norm or is_boundary(state.step + 1)):
                        def clip():
                            return accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm or math.inf)
                    loss, grad_norm = train_step(model, optimizer, batch, memory_format, accelerator.backward, clip,
                                                 loss_fn=loss_fn)
                state.batch_in_epoch += 1
                out.add_loss(loss, state.step + 1)
                if not accelerator.sync_gradients:
                    continue
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
                    scheduler.step()
                state.step += 1
                progress.update(1)
                if is_boundary(state.step):
                    progress.set_postfix(loss=f"{out.log_train(scheduler.get_last_lr()[0], grad_norm):.4f}",
                                         refresh=False)
                if stop.requested(accelerator):  # every step, before any evaluation or checkpoint is due
                    out.save()
                    accelerator.print(f"stopped by signal {stop.signum} at step {state.step}: checkpoint saved; "
                                      f"exit {EXIT_PREEMPTED}, rerun the same command to resume")
                    return EXIT_PREEMPTED
                if cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
                    out.evaluate()
                if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                    out.save()
                if state.step >= total_steps:
                    if accelerator.gradient_state.end_of_dataloader:  # the last step is also the epoch's last
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    break
            else:  # the epoch ran to its end
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if not cfg.train.eval_every:
                    out.evaluate()
                out.save()
    if state.last_eval != state.step:
        out.evaluate()
        out.save()  # after the evaluation, so the checkpoint holds its best mIoU
    elif state.last_ckpt != state.step:
        out.save()
    out.close()
    out.report()
    return 0


def _find_resume(cfg, accelerator: Accelerator, run_dir, changes: dict):
    """The verified checkpoint to resume from, and the config adjusted for this number of processes."""
    def warn(message: str) -> None:
        print(f"fcn-train: warning: {message}", file=sys.stderr, flush=True)

    folder, saved = find_resume_checkpoint(accelerator, run_dir, cfg.train.resume, warn)
    if saved is None:
        return cfg, None, None, None
    old = saved["train_state"]
    plan = plan_resume(old["world_size"], old["grad_accum"], old["batch_in_epoch"], accelerator.num_processes,
                       cfg.train.grad_accum, cfg.data.batch_size, "train.grad_accum" in changes)
    if plan.grad_accum != cfg.train.grad_accum:
        changes["train.grad_accum"] = (cfg.train.grad_accum, plan.grad_accum)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=plan.grad_accum))
        accelerator.gradient_accumulation_steps = plan.grad_accum
    return cfg, folder, saved, plan


def _report_complete(accelerator: Accelerator, run_dir, saved: dict, total_steps: int) -> int:
    """A finished run rerun with its config: say so and touch nothing."""
    best = f"{saved['best_miou']:.4f}" if saved["best_miou"] >= 0 else "none"
    accelerator.print(f"{run_dir} is complete: step {saved['step']} of {total_steps}, best val mIoU {best}; "
                      f"models: {run_dir / 'model_best.safetensors'}, {run_dir / 'model_last.safetensors'}. "
                      f"To train on, raise train.max_steps or train.epochs; for another run beside it, "
                      f"train.run_name={free_run_name(run_dir)}")
    return 0


class Outputs:
    """Everything the training loop writes: log rows, evaluations, checkpoints, exports, console lines.

    Keeps the device-side loss accumulators (the loop syncs with the host only at log steps,
    evaluations and saves) and the throughput clock: ``train/images_per_sec`` and
    ``train/data_wait_fraction`` count training steps only, not evaluations or saves. ``save``
    and the export of ``model_best`` first run ``check_finite``: no weights are written without it.
    """

    def __init__(self, cfg, accelerator: Accelerator, model, scheduler, val_loader, state: TrainState,
                 stop: StopFlag, wandb_config: dict | None):
        self.cfg, self.accelerator, self.model, self.val_loader = cfg, accelerator, model, val_loader
        self.scheduler = scheduler
        self.state, self.stop = state, stop
        self.run_dir = cfg.run_dir()
        self.classes = class_names(cfg.data.classes)
        self.started, self.final_miou = time.perf_counter(), None
        self.wandb = None  # the W&B run, on the main process only
        self.provenance = {"config_fingerprint": config_fingerprint(cfg)}
        if wandb_config is not None:
            self.wandb = start_wandb(wandb_init_kwargs(cfg, self.run_dir, state.wandb_run_id), wandb_config,
                                     "fcn-train")
            state.wandb_run_id = self.wandb.id
        # Rows logged after the checkpoint we resume from are dropped: they are about to be logged again.
        self.metrics_log = (MetricsLog(self.run_dir / "metrics.jsonl", keep_until=state.step)
                            if accelerator.is_main_process else None)
        device = accelerator.device
        self.loss_sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._new_window()

    def _new_window(self) -> None:
        self.window_start, self.window_batches, self.paused, self.data_wait = time.perf_counter(), 0, 0.0, 0.0

    def timed(self, batches):
        """The loader's batches, with the time spent waiting for each added to ``train/data_wait_fraction``."""
        batches = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.data_wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def add_loss(self, loss: torch.Tensor, step: int) -> None:
        """Accumulate a micro-batch's loss on the device, remembering the first non-finite one's step."""
        self.loss_sum += loss
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)
        self.window_batches += 1

    def log(self, row: dict) -> None:
        row = {"step": self.state.step, "epoch": self.state.epoch, **row}
        if self.metrics_log is not None:
            self.metrics_log.write({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
        if self.wandb is not None and not self.stop.terminated:  # a job-wide SIGTERM also stopped wandb's service
            self.wandb.log({STEP_KEY: row.pop("step"), **row}, step=self.state.step)

    def log_train(self, lr: float, grad_norm: torch.Tensor | None) -> float:
        """Log the mean loss since the last log step, lr, grad norm and throughput; returns the loss."""
        self.check_finite()
        loss_sum, data_wait = self.accelerator.reduce(
            torch.stack([self.loss_sum, torch.tensor(self.data_wait, device=self.loss_sum.device)]), "mean").tolist()
        step_time = time.perf_counter() - self.window_start - self.paused  # evaluations and saves left out
        self.log({"train/loss": loss_sum / self.window_batches, "train/lr": lr,
                  "train/images_per_sec": self.window_batches * self.cfg.data.batch_size
                  * self.accelerator.num_processes / step_time,
                  "train/data_wait_fraction": min(1.0, data_wait / step_time),
                  **({"train/grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                  **({"train/max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
                     if torch.cuda.is_available() else {})})
        self.loss_sum.zero_()
        mean_loss = loss_sum / self.window_batches
        self._new_window()
        return mean_loss

    def check_finite(self) -> None:
        """Raise NonFiniteError when any process saw a non-finite loss or holds a non-finite weight.

        One all-reduce of two flags; every process must call it at the same step.
        """
        bad_weights = torch.stack([~torch.isfinite(p).all() for p in self.model.parameters()]).any()
        flags = torch.stack([self.first_bad, torch.where(bad_weights, self.state.step, -1)])
        bad_loss, bad_weight = (int(v) for v in self.accelerator.reduce(flags, "max"))
        if bad_loss < 0 and bad_weight < 0:
            return
        what = f"loss at step {bad_loss}" if bad_loss >= 0 else f"weights at step {bad_weight}"
        last = complete_checkpoints(self.run_dir)
        kept = f"the last checkpoint, {last[-1]}, is intact" if last else f"no checkpoint was saved in {self.run_dir}"
        raise NonFiniteError(f"non-finite {what}; {kept} (lower optim.lr or try train.mixed_precision=bf16/no)")

    def evaluate(self) -> None:
        """Validate, log, print the eval line, write ``eval/step_N.json``, export ``model_best`` when best."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        start = time.perf_counter()
        self.check_finite()
        result = evaluate(self.model, self.val_loader, accelerator, cfg.model.num_classes, IMAGENET_MEAN,
                          IMAGENET_STD, mode=cfg.train.eval_mode, classes=self.classes, progress=False,
                          num_examples=cfg.log.num_images if cfg.log.wandb else 0)
        seconds = time.perf_counter() - start
        metrics, new_best = result.metrics, result.metrics["mIoU"] > state.best_miou
        if new_best:
            state.best_miou, state.best_step = metrics["mIoU"], state.step
        row = {**val_scalars(metrics, self.classes), BEST_KEY: state.best_miou, "val/seconds": seconds}
        if self.wandb is not None and not self.stop.terminated:
            row.update(eval_tables(result.confusion, self.classes, "val"))
            row["val/examples"] = example_images(result.examples, self.classes)
        self.log(row)
        state.last_eval, self.final_miou = state.step, metrics["mIoU"]
        if accelerator.is_main_process:
            console(eval_line(state.step, metrics, new_best, seconds))
            write_eval_files({**metrics, "checkpoint": f"step {state.step}", "split": cfg.data.val_split},
                             self.run_dir / "eval" / f"step_{state.step:08d}.json")
            if new_best:
                self._export("model_best.safetensors", metrics)
        self.paused += time.perf_counter() - start

    def save(self) -> None:
        """A resumable checkpoint of this step and the ``model_last`` export, after ``check_finite``."""
        start = time.perf_counter()
        self.check_finite()
        self.state.last_ckpt = self.state.step
        save_checkpoint(self.accelerator, self.run_dir, self.state.step, self.cfg.train.keep_last,
                        train_state_json(self.state, self.scheduler))
        if self.accelerator.is_main_process:
            self._export("model_last.safetensors")
        self.paused += time.perf_counter() - start

    def _export(self, name: str, metrics: dict | None = None) -> None:
        """Export a model; with ``log.log_model`` asking for it, log it as a W&B model artifact too."""
        kind = "best" if name == "model_best.safetensors" else "last"
        logged = self.wandb is not None and not self.stop.terminated and self.cfg.log.log_model in (kind, "all")
        source = model_source(self.wandb, self.state.step, logged) if self.wandb is not None else {}
        path = export_model(self.accelerator.unwrap_model(self.model), self.run_dir / name, self.cfg.model,
                            self.classes, IMAGENET_MEAN, IMAGENET_STD, self.state.step, metrics,
                            trained_with={"mixed_precision": self.cfg.train.mixed_precision},
                            provenance={**self.provenance, "wandb": json.dumps(source)})
        if logged:
            log_model_artifact(self.wandb, path, kind, self.state.step, metrics or {},
                               {"model": dataclasses.asdict(self.cfg.model), **self.provenance})

    def report(self) -> None:
        """The end-of-run summary, from the main process."""
        if not self.accelerator.is_main_process:
            return
        state = self.state
        best = (state.best_miou, state.best_step) if state.best_miou >= 0 else None
        location = run_location(self.wandb) if self.wandb is not None else "W&B: off (log.wandb=false)"
        models = [self.run_dir / "model_best.safetensors", self.run_dir / "model_last.safetensors"]
        print("\n".join(summary_lines(best, self.final_miou, time.perf_counter() - self.started, models, location)),
              flush=True)

    def close(self) -> None:
        if self.metrics_log is not None:
            self.metrics_log.close()


if __name__ == "__main__":
    sys.exit(main())

"""Run ``fcn_dist.train.main`` with fault-injection hooks chosen by environment variables.

Test-only. Used as ``python tests/train_hooks.py --config ... overrides`` (or under torchrun):
- ``FCN_TEST_SIGTERM_AT_CALL=k``: SIGTERM to the whole process group during the k-th forward
  pass, as Slurm signals every process of a job (wandb's service and loader workers included);
  run it with ``start_new_session=True``.
- ``FCN_TEST_SIGUSR1_AT_CALL=k``: SIGUSR1 to this process during the k-th forward pass (Slurm's
  preemption warning, as the batch script forwards it).
- ``FCN_TEST_NAN_AT_CALL=k``: the k-th loss (1-based) is NaN.
  (These count calls of the training loss, whichever ``optim.loss`` builds: ``train.build_loss`` is wrapped.)
- ``FCN_TEST_FAIL_SAVE_AT_STEP=s``: the checkpoint of step s fails halfway (after Accelerate has
  written part of it).
- ``FCN_TEST_LOG_SAMPLES=DIR``: every rank appends the dataset indices each training micro-batch
  consumed to ``DIR/rank<r>.jsonl`` as ``{"epoch": e, "ids": [...]}`` (needs
  ``data.num_workers=0``: items are fetched in this process, in order, a batch ahead).
- ``FCN_TEST_PROBE=faster|slower``: ``mixed_precision=auto``'s CPU probe says bf16 is 2x faster,
  or 2x slower, than fp32.
- ``FCN_TEST_DUMP_WEIGHTS=1``: after each checkpoint, every rank writes its own unwrapped weights
  to ``<run_dir>/rank<r>_step<s>.safetensors``.
- ``FCN_TEST_MIOU=0.2,0.6,0.4``: the k-th evaluation reports the k-th mIoU (the rest of its metrics
  are real), so a test can pick where the best evaluation falls.
"""

import collections
import json
import os
import signal
import sys

import torch
from safetensors.torch import save_file

import fcn_dist.train as train

calls = {"loss": 0}
_build_loss = train.build_loss
_save = train.save_checkpoint


def hooked(loss_fn):
    def loss_with_hooks(logits, masks):
        calls["loss"] += 1
        if calls["loss"] == int(os.environ.get("FCN_TEST_SIGTERM_AT_CALL", 0)):
            os.killpg(os.getpgid(0), signal.SIGTERM)
        if calls["loss"] == int(os.environ.get("FCN_TEST_SIGUSR1_AT_CALL", 0)):
            os.kill(os.getpid(), signal.SIGUSR1)
        loss = loss_fn(logits, masks)
        if calls["loss"] == int(os.environ.get("FCN_TEST_NAN_AT_CALL", 0)):
            loss = loss * torch.tensor(float("nan"))
        return loss

    return loss_with_hooks


def build_loss(*args, **kwargs):
    return hooked(_build_loss(*args, **kwargs))


def save_checkpoint(accelerator, run_dir, step, keep_last, *args):
    if step == int(os.environ.get("FCN_TEST_FAIL_SAVE_AT_STEP", -1)):
        original = accelerator.save_state

        def half_then_fail(output_dir, **kwargs):
            os.makedirs(output_dir, exist_ok=True)
            accelerator.save_model(accelerator._models[0], output_dir)  # part of the state lands on disk
            raise OSError("injected failure: disk full while saving")

        accelerator.save_state = half_then_fail
        try:
            return _save(accelerator, run_dir, step, keep_last, *args)
        finally:
            accelerator.save_state = original
    out = _save(accelerator, run_dir, step, keep_last, *args)
    if os.environ.get("FCN_TEST_DUMP_WEIGHTS"):
        model = accelerator.unwrap_model(accelerator._models[0])
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(run_dir, f"rank{accelerator.process_index}_step{step}.safetensors"))
    return out


train.build_loss = build_loss

if os.environ.get("FCN_TEST_LOG_SAMPLES"):
    from fcn_dist.data.transforms import AugmentedDataset

    fetched = collections.deque()
    _getitem, _step = AugmentedDataset.__getitem__, train.train_step

    def getitem(self, i):
        fetched.append((int(self.epoch), self.indices[i]))
        return _getitem(self, i)

    def train_step(model, optimizer, batch, *args, **kwargs):
        taken = [fetched.popleft() for _ in range(len(batch[1]))]
        path = os.path.join(os.environ["FCN_TEST_LOG_SAMPLES"], f"rank{os.environ.get('RANK', '0')}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps({"epoch": taken[0][0], "ids": [i for _, i in taken]}) + "\n")
        return _step(model, optimizer, batch, *args, **kwargs)

    AugmentedDataset.__getitem__ = getitem
    train.train_step = train_step
train.save_checkpoint = save_checkpoint

if os.environ.get("FCN_TEST_PROBE"):
    import fcn_dist.precision as precision

    bf16_seconds = {"faster": 0.5, "slower": 2.0}[os.environ["FCN_TEST_PROBE"]]
    precision.probe_cpu = lambda backward=True, repeats=4: (1.0, bf16_seconds)

if os.environ.get("FCN_TEST_MIOU"):
    mious = [float(v) for v in os.environ["FCN_TEST_MIOU"].split(",")]
    _evaluate = train.evaluate

    def evaluate(*args, **kwargs):
        result = _evaluate(*args, **kwargs)
        result.metrics["mIoU"] = mious.pop(0)
        return result

    train.evaluate = evaluate

if __name__ == "__main__":
    sys.exit(train.main(sys.argv[1:]))

"""torchrun worker: the gradient of every training loss on 2 processes x batch B, as training computes it.

Each rank takes its half of ``loss_case_batch()``, runs the DDP-wrapped ``loss_case_model()``
(Accelerate's prepare, gloo on CPU) and backpropagates ``build_loss`` with ``fcn_dist.train.loss_shards``:
DDP averages the two ranks' gradients. For each case it also records the gradient without the
sharding hook (each rank normalising by itself), which the test expects to be wrong wherever a
loss needs global sums. Writes ``rank<r>.pt``: {case: {"loss", "grads", "naive_grads"}}.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).parent))
from loss_cases import CASES, NUM_CLASSES, loss_case_batch, loss_case_model, optim_config  # noqa: E402

from fcn_dist.losses import Shards, build_loss  # noqa: E402
from fcn_dist.train import loss_shards  # noqa: E402

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
images, masks = loss_case_batch()
per_rank = len(images) // world
images, masks = images[rank * per_rank:(rank + 1) * per_rank], masks[rank * per_rank:(rank + 1) * per_rank]
model = accelerator.prepare(loss_case_model())
results = {}
for case in CASES:
    results[case] = {}
    for key, shards in (("grads", loss_shards(accelerator)), ("naive_grads", Shards())):
        loss_fn = build_loss(optim_config(case), NUM_CLASSES, accelerator.device, shards)
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), masks)
        accelerator.backward(loss)
        results[case][key] = {name: p.grad.detach().clone() for name, p in model.module.named_parameters()}
        if key == "grads":
            results[case]["loss"] = loss.detach().clone()
torch.save(results, out / f"rank{rank}.pt")
accelerator.end_training()

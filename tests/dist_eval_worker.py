"""torchrun worker for tests/test_evaluate.py: ``evaluate()`` on Accelerate-prepared loaders.

Run as ``torchrun --nproc_per_node 2 tests/dist_eval_worker.py OUT.json``. Evaluates 5 images
of different sizes with batch sizes 1 and 2, with and without ``even_batches`` (the padded
last batch that training's loader has), with a plain and a DDP-wrapped model, and checks that
a loader not prepared by Accelerate is refused. Rank 0 writes the confusion matrices to OUT.json.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_helpers import random_images, tiny_model  # noqa: E402

from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fcn_dist.data import list_collate  # noqa: E402
from fcn_dist.evaluate import evaluate  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    dataset = random_images(5)
    model = tiny_model().to(accelerator.device)
    results = {}
    for even in (True, False):
        for batch_size in (1, 2):
            accelerator.even_batches = even
            loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                                                     collate_fn=list_collate))
            result = evaluate(model, loader, accelerator, 21, IMAGENET_MEAN, IMAGENET_STD, num_examples=1)
            results[f"even={even},batch={batch_size}"] = {"cm": result.confusion.tolist(),
                                                          "num_images": result.metrics["num_images"],
                                                          "examples": len(result.examples)}
    accelerator.even_batches = True
    ddp_model = accelerator.prepare(tiny_model())
    loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=1))
    result = evaluate(ddp_model, loader, accelerator, 21, IMAGENET_MEAN, IMAGENET_STD)
    results["ddp,default_collate"] = {"cm": result.confusion.tolist(), "num_images": result.metrics["num_images"],
                                      "examples": 0}
    try:
        evaluate(model, torch.utils.data.DataLoader(dataset, batch_size=1), accelerator, 21, IMAGENET_MEAN,
                 IMAGENET_STD)
        results["plain_loader_refused"] = False
    except ValueError:
        results["plain_loader_refused"] = True
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps(results))
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])

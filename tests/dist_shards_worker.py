"""torchrun worker: record the dataset indices each rank's prepared train loader fetches per epoch.

Set up as train.py does (set_seed, build_dataloaders, Accelerator.prepare, set_epoch) and
iterated for real, so Accelerate's per-iteration RNG synchronisation is part of what is tested.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from fcn_dist.config import load_config
from fcn_dist.data import build_dataloaders

voc_root, out = sys.argv[1], Path(sys.argv[2])
cfg = load_config(None, ["data.format=voc", f"data.root={voc_root}", "data.batch_size=2", "data.num_workers=0",
                         "data.crop_size=[64,64]"])
accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
set_seed(cfg.train.seed)
train_loader, _ = build_dataloaders(cfg)
train_loader = accelerator.prepare(train_loader)
dataset = train_loader.dataset
seen: list[int] = []
fetch = type(dataset).__getitem__
type(dataset).__getitem__ = lambda self, index: (seen.append(int(index)), fetch(self, index))[1]
shards = {}
for epoch in (0, 1):
    train_loader.set_epoch(epoch)
    dataset.set_epoch(epoch)
    seen.clear()
    shards[epoch] = [int(images.shape[0]) for images, _ in train_loader] and list(seen)
(out / f"shard{accelerator.process_index}.json").write_text(json.dumps(shards))
accelerator.end_training()

"""Train a few epochs in each process of a (torchrun) launch; save each rank's adapter and
metrics rows (rankR.pt, rankR.json).

    torchrun --nproc_per_node 2 tests/scripts/train_ranks.py SETTINGS.json OUT_DIR

Used by tests/test_distributed.py: with gloo on CPUs, the ranks must end with identical
adapters and logged metrics, equal to a single process trained on the same data.
"""

import json
import sys
from pathlib import Path

import torch

from d3po.config import TrainSettings, parse
from d3po.train import Trainer

settings = parse(TrainSettings, Path(sys.argv[1]))
out = Path(sys.argv[2])
torch.set_num_threads(1)
trainer = Trainer(settings)
# Plain SGD: unlike Adam, it shows a wrongly scaled gradient (e.g. a missing world-size factor)
trainer.optimizer = trainer.accelerator.prepare(torch.optim.SGD(trainer.parameters, lr=0.5))
rows = [trainer.run_epoch() for _ in range(settings.training.epochs)]
weights = {n: p.detach().cpu() for n, p in trainer.pipe.unet.named_parameters() if "lora" in n}
rank = trainer.accelerator.process_index
torch.save(weights, out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps(rows))

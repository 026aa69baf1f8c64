"""The online training loop every method shares (d3po.methods: D3PO, DDPO, DPOK, ...).

Each epoch: (1) sample K images per prompt with the current policy, recording trajectories;
(2) score them with the proxy objectives; (3) the method turns trajectories and scores into
training items (D3PO: preference pairs with reference log-probs, DDPO: advantages, ...);
(4) optimizer steps over whole units, in micro-batches of items (a method with a PPO ratio
first gets log pi_old of every item from a no-grad pass of those very micro-batches); (5) a
metrics row with the seconds of each phase, and every ``checkpoint_every`` epochs an adapter
checkpoint and the resume state.

Everything random in an epoch is drawn from (seed, epoch), so a run resumed from its state
folder continues exactly as the uninterrupted run would have.

Outputs: ``run_dir/metrics.csv`` and ``run_dir/checkpoints/epoch_NNNN/`` are written when the
run completes. While it runs, everything lives in ``state_dir`` (not a workflow output, so a
preempted job's rerun finds it): ``checkpoints/``, ``metrics.csv``, and ``latest/`` holding the
adapter, optimizer, method state and counters, replaced atomically (write, then rename).
Publishing the outputs clears ``state_dir``: only an unfinished run leaves a state behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from d3po import rewards
from d3po.config import StateError, TrainSettings
from d3po.errors import ConfigError
from d3po.feedback import LabelledSamples
from d3po.methods import Feedback, Items, Policy, judged_methods, make_method
from d3po.models import add_lora, load_lora_state, load_pipeline, save_lora
from d3po.provenance import provenance
from d3po.sampling import Trajectories, sample

# Settings a preempted run may change on resume because they do not change its results: the
# number of epochs (a longer run continues the shorter one), how many items or images go
# through the UNet at once (losses are sums, noise is drawn per image), and activation
# recomputation. Lowering micro_batch_size after running out of GPU memory is the commonest fix.
RESULT_NEUTRAL = {
    "training": ("epochs", "micro_batch_size", "gradient_checkpointing"),
    "sampler": ("images_per_call",),
    "model": ("local_files_only",),
}

# The phases of an epoch timed in metrics.csv (column NAME_seconds; 0 where a run has none).
PHASES = ("sampling", "scoring", "reference", "old_log_probs", "update")


class Trainer:
    """One training run: a pipeline with a LoRA adapter, an optimizer and a method."""

    def __init__(
        self,
        settings: TrainSettings,
        labelled: LabelledSamples | None = None,
        init_adapter: Path | None = None,
    ) -> None:
        """``init_adapter``: a LoRA checkpoint the adapter starts from (a feedback round after
        the first starts from the previous round's final adapter)."""
        self.method = make_method(settings)
        if labelled is not None and not self.method.accepts_judgements:
            raise ConfigError(
                f"method: {settings.method} does not train on human judgements (it needs a "
                f"{self.method.signal} from a proxy); methods that do: "
                f"{', '.join(judged_methods())}"
            )
        self.settings = settings
        self.labelled = labelled
        self.training = settings.training
        self.accelerator = make_accelerator(settings.training.mixed_precision)
        self.pipe = load_pipeline(settings.model, self.accelerator.device)
        if settings.training.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        torch.manual_seed(settings.seed)  # the LoRA initialisation, identical on every rank
        self.parameters = add_lora(self.pipe.unet, settings.lora)
        self.init_adapter = init_adapter
        if init_adapter is not None:
            load_lora_state(self.pipe.unet, init_adapter)
        optimizer = torch.optim.AdamW(
            self.parameters,
            lr=self.training.learning_rate,
            weight_decay=self.training.weight_decay,
        )
        # The training forward goes through the prepared (DDP-wrapped when distributed) UNet,
        # so LoRA gradients are synchronised; sampling and the reference use the bare module.
        self.unet, self.optimizer = self.accelerator.prepare(self.pipe.unet, optimizer)
        self.epoch = 0
        self.metrics: list[dict] = []
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)  # of the current epoch

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self) -> dict:
        """Sample, judge and update once; return the epoch's metrics row (with the seconds of
        each phase, ``PHASES``)."""
        self.epoch += 1
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        start = time.perf_counter()
        if self.labelled is None:  # online: sample with the current policy, judge by proxy
            trajectories = self.collect(self.epoch)
            with self.phase("scoring"):
                scores, pairs = self.score(trajectories), None  # (B, objectives)
        else:  # a judged sample set: the same pairs every epoch
            trajectories, scores, pairs = self.judged_samples(), None, self.labelled.pairs
        seed = np.random.SeedSequence([self.settings.seed, self.epoch, 1]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        items = self.method.prepare(Feedback(trajectories, scores, pairs), generator)
        update = self.update(items, trajectories, generator)
        row = {
            "epoch": self.epoch,
            "samples_seen": self.epoch * len(trajectories.prompts),
            "reward_mean": float("nan") if scores is None else float(scores[:, 0].mean()),
            "reward_std": float("nan") if scores is None else float(scores[:, 0].std()),
            "units": items.num_units,
            **update,
            **{f"{name}_seconds": seconds for name, seconds in self.phase_seconds.items()},
            "seconds": time.perf_counter() - start,
        }
        self.metrics.append(row)
        return row

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase ``name`` of this epoch (after the device's
        queued work, so that asynchronous GPU kernels count in the phase that launched them)."""
        synchronize(self.accelerator.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.accelerator.device)
            self.phase_seconds[name] += time.perf_counter() - start

    def epoch_prompts(self, epoch: int) -> tuple[list[str], list[int]]:
        """This epoch's prompts (drawn with replacement) and one noise seed per prompt."""
        rng = np.random.default_rng([self.settings.seed, epoch])
        count = self.training.prompts_per_epoch
        prompts = [str(p) for p in rng.choice(self.settings.prompts, size=count)]
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]
        return prompts, seeds

    @torch.no_grad()
    def collect(self, epoch: int) -> Trajectories:
        """Sample this process's share of the epoch's prompts, then share the whole batch.

        Every process ends with the same trajectories (all prompts), so every process builds
        the same training items; the update then splits each optimizer step's items.
        """
        with self.phase("sampling"):
            trajectories = self.sample_share(epoch)
        if self.method.needs_reference_log_probs:
            trajectories.reference_log_probs = self.reference_log_probs(trajectories)
        if self.accelerator.num_processes == 1:
            return trajectories
        with self.phase("sampling"):
            return gather_trajectories(trajectories, self.accelerator)

    @torch.no_grad()
    def sample_share(self, epoch: int) -> Trajectories:
        """This process's contiguous share of the epoch's prompts, sampled by the policy."""
        prompts, seeds = self.epoch_prompts(epoch)
        world = self.accelerator.num_processes
        if len(prompts) % world:
            raise ConfigError(
                f"training.prompts_per_epoch={len(prompts)} must be a multiple of the number "
                f"of processes ({world}), so that every process samples as many prompts"
            )
        per_process = len(prompts) // world
        first = self.accelerator.process_index * per_process
        share = slice(first, first + per_process)  # contiguous: gathering keeps the order
        self.pipe.unet.eval()
        with self.accelerator.autocast():
            return sample(
                self.pipe,
                prompts[share],
                self.training.images_per_prompt,
                seeds[share],
                self.settings.sampler,
                reduction=self.training.log_prob_reduction,
            )

    def judged_samples(self) -> Trajectories:
        """The labelled set on this device, with its reference log-probs if the method needs
        them (both done once).

        The reference policy is the base model (adapter off) when the adapter starts at zero;
        a round that starts from an earlier round's adapter takes the log-probs recorded when
        that adapter sampled the set (the policy the judged images came from), which stay
        fixed however far the run goes, across resumes too.
        """
        trajectories = self.labelled.trajectories
        if trajectories.num_steps != self.settings.sampler.num_steps:
            raise ConfigError(
                f"sampler.num_steps={self.settings.sampler.num_steps} but the judged samples "
                f"were made with {trajectories.num_steps}; use the sampler they were made with"
            )
        device = self.accelerator.device
        if trajectories.latents.device != device:
            trajectories = dataclasses.replace(
                trajectories,
                latents=trajectories.latents.to(device),
                prompt_embeds=trajectories.prompt_embeds.to(device),
                negative_embeds=trajectories.negative_embeds.to(device),
            )
        if self.method.needs_reference_log_probs and trajectories.reference_log_probs is None:
            trajectories.reference_log_probs = (
                self.reference_log_probs(trajectories)
                if self.init_adapter is None
                else trajectories.log_probs.to(trajectories.latents.device)
            )
        self.labelled.trajectories = trajectories
        return trajectories

    def score(self, trajectories: Trajectories) -> np.ndarray:
        columns = [
            rewards.score(
                name,
                trajectories.images,
                trajectories.prompts,
                self.settings.proxy_options.get(name),
            )
            for name in self.settings.objectives
        ]
        return np.stack(columns, axis=1)

    def policy(self, trajectories: Trajectories, unet=None) -> Policy:
        """The model as methods see it on ``trajectories``: the forward through ``unet``
        (default: the bare UNet, for no-grad use; the training forward passes the prepared one)."""
        return Policy(
            unet=self.pipe.unet if unet is None else unet,  # a compiled module has no truth
            bare=self.pipe.unet,
            scheduler=self.pipe.scheduler,
            trajectories=trajectories,
            sampler=self.settings.sampler,
            reduction=self.training.log_prob_reduction,
        )

    @torch.no_grad()
    def reference_log_probs(self, trajectories: Trajectories) -> torch.Tensor:
        """(B, T) log pi_ref of every recorded step: adapter off, no gradients, batched as
        sampling is (``sampler.images_per_call`` images of one step per UNet call), so the pass
        costs what sampling costs whatever the training micro-batch."""
        batch, steps = trajectories.log_probs.shape
        size = self.settings.sampler.images_per_call
        policy = self.policy(trajectories)
        log_probs = torch.empty(batch, steps, device=trajectories.log_probs.device)
        with self.phase("reference"), self.accelerator.autocast():
            for step in range(steps):
                for first in range(0, batch, size):
                    images = torch.arange(first, min(first + size, batch))
                    reference = policy.reference_step(images, torch.full_like(images, step))
                    log_probs[images, step] = reference.log_prob.to(log_probs.device)
        return log_probs

    def update(
        self, items: Items, trajectories: Trajectories, generator: torch.Generator
    ) -> dict[str, float]:
        """Optimizer steps over shuffled units; each step averages its items' losses.

        The items of a step are dealt out to the processes (padded with zero-weight items so
        every process runs the same micro-batches); DDP averages the processes' gradients,
        hence the factor ``world``: the step's gradient is the mean over all its items.
        """
        self.pipe.unet.train()
        policy = self.policy(trajectories, self.unet)
        steps = self.optimizer_steps(items, generator)
        if self.method.needs_old_log_probs:
            self.record_old_log_probs(steps, policy)
        totals: dict[str, float] = {}
        with self.phase("update"):
            for micro_batches, step_size in steps:
                self.optimizer_step(micro_batches, step_size, policy, totals)
        if self.accelerator.num_processes > 1:  # each process summed its own share of items
            device = self.accelerator.device
            sums = torch.tensor(list(totals.values()), dtype=torch.float64, device=device)
            totals = dict(zip(totals, self.accelerator.reduce(sums, "sum").tolist(), strict=True))
        return _averages(totals)

    def optimizer_step(
        self, micro_batches: list[Items], step_size: int, policy: Policy, totals: dict
    ) -> None:
        """Accumulate the gradient of one step's micro-batches (of ``step_size`` items over all
        processes), clip it and step; add the diagnostics to ``totals``."""
        world = self.accelerator.num_processes
        self.optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches:
            last = micro is micro_batches[-1]
            # gradients are all-reduced once per optimizer step, on the last micro-batch
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.unet)
            with sync, self.accelerator.autocast():
                loss, diagnostics = self.method.loss(micro, policy)
                weighted = (loss * micro["weight"].to(loss.device)).sum()
                self.accelerator.backward(weighted * world / step_size)
            # logged means leave the padding out (but for the diagnostics of a padded batch)
            real = float(micro["weight"].sum())
            mean_loss = weighted.detach() / real if real else 0.0
            _accumulate(totals, {"loss": mean_loss, **diagnostics}, real)
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, self.training.max_grad_norm)
        _accumulate(totals, {"grad_norm": grad_norm}, 1)
        self.optimizer.step()

    def optimizer_steps(
        self, items: Items, generator: torch.Generator
    ) -> list[tuple[list[Items], int]]:
        """The epoch's optimizer steps: this process's micro-batches of each, and the step's
        item count over all processes (its loss is the mean over them)."""
        size = self.training.micro_batch_size
        order = torch.randperm(items.num_units, generator=generator)
        steps = []
        for first in range(0, items.num_units, self.training.units_per_step):
            step_items = items.of_units(order[first : first + self.training.units_per_step])
            shard = step_items.shard(self.accelerator.process_index, self.accelerator.num_processes)
            micro_batches = [shard.select(slice(i, i + size)) for i in range(0, len(shard), size)]
            steps.append((micro_batches, len(step_items)))
        return steps

    @torch.no_grad()
    def record_old_log_probs(self, steps: list[tuple[list[Items], int]], policy: Policy) -> None:
        """Set ``old_log_prob`` of every item to the method's ``policy_log_prob`` under the
        weights that sampled the epoch: the training forward itself (module, mode, autocast,
        micro-batches) without gradients, before the first optimizer step. One extra no-grad
        pass over the trained items, so that the ratio starts at exactly 1."""
        with self.phase("old_log_probs"):
            for micro_batches, _ in steps:
                for micro in micro_batches:
                    with self.accelerator.autocast():
                        micro.tensors["old_log_prob"] = self.method.policy_log_prob(micro, policy)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler  # fp16's loss scale, which an exact resume needs
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
        }

    def fingerprint(self) -> str:
        """The settings (and judged pairs) that change the results, which a saved state must
        match; more epochs may be asked, and the memory knobs (RESULT_NEUTRAL) may change."""
        fields = asdict(self.settings)
        for section, names in RESULT_NEUTRAL.items():
            for name in names:
                del fields[section][name]
        if self.labelled is not None:
            fields["judged_pairs"] = self.labelled.fingerprint()
        if self.init_adapter is not None:
            fields["init_adapter"] = str(self.init_adapter)
        return json.dumps(fields, sort_keys=True, default=str)

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])


def gather_trajectories(trajectories: Trajectories, accelerator: Accelerator) -> Trajectories:
    """Concatenate every process's trajectories (in rank order) on every process."""
    from accelerate.utils import gather, gather_object

    def everyone(tensor: torch.Tensor) -> torch.Tensor:
        return gather(tensor.contiguous().to(accelerator.device))

    group_offset = accelerator.process_index * (int(trajectories.groups.max()) + 1)
    reference = trajectories.reference_log_probs
    return dataclasses.replace(
        trajectories,
        prompts=gather_object(trajectories.prompts),
        groups=everyone(trajectories.groups + group_offset).cpu(),
        seeds=everyone(trajectories.seeds).cpu(),
        latents=everyone(trajectories.latents),
        log_probs=everyone(trajectories.log_probs),
        prompt_embeds=everyone(trajectories.prompt_embeds),
        images=everyone(trajectories.images),
        reference_log_probs=None if reference is None else everyone(reference),
    )


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator; mixed precision asked for on a machine without CUDA falls back to fp32."""
    if mixed_precision != "no" and not torch.cuda.is_available():
        warnings.warn(
            f"training.mixed_precision={mixed_precision} needs a CUDA GPU; none is visible, "
            "so this run uses the CPU in float32",
            stacklevel=2,
        )
        mixed_precision = "no"
    # cpu=True lets accelerate run several CPU processes (gloo) under torchrun/accelerate launch
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs kernels asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accumulate(totals: dict[str, float], values: dict, weight: float) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + float(value) * weight
        totals[f"_n_{key}"] = totals.get(f"_n_{key}", 0.0) + weight


def _averages(totals: dict[str, float]) -> dict[str, float]:
    return {k: v / totals[f"_n_{k}"] for k, v in totals.items() if not k.startswith("_n_")}


# ---------------------------------------------------------------------- the run on disk


def train(
    settings: TrainSettings,
    run_dir: Path,
    state_dir: Path,
    labelled: LabelledSamples | None = None,
    init_adapter: Path | None = None,
) -> Trainer:
    """Train to the last epoch, resuming from ``state_dir`` when it holds a saved state.

    Online (sample and judge by proxy every epoch), or on a judged sample set (``labelled``),
    optionally starting from an earlier round's adapter (``init_adapter``).

    With several processes every one resumes, trains and reaches each save together; the main
    process writes the files while the others wait at the barrier (no collective inside).
    """
    trainer = Trainer(settings, labelled=labelled, init_adapter=init_adapter)
    accelerator = trainer.accelerator
    resumed = resume(trainer, state_dir)
    if not resumed and accelerator.is_main_process:  # no adapter of an earlier run may leak in
        shutil.rmtree(state_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    epochs = settings.training.epochs
    bar = tqdm(
        total=epochs,
        initial=trainer.epoch,
        desc=f"train {settings.method}",
        disable=not accelerator.is_main_process,
    )
    while trainer.epoch < epochs:
        row = trainer.run_epoch()
        bar.update(1)
        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", reward=row["reward_mean"])
        if trainer.epoch % settings.training.checkpoint_every == 0 or trainer.epoch == epochs:
            if accelerator.is_main_process:
                save_state(trainer, state_dir)
            accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process:
        publish(state_dir, Path(run_dir), epochs)
    accelerator.wait_for_everyone()
    return trainer


# Not accelerate's save_state/load_state (issue 10 asked; kept ours): save_state serialises every
# prepared model's full state dict before its hooks run (the 3.4 GB SD-1.5 UNet at every
# checkpoint, unless a hook drops it and the LoRA is saved here anyway), writes per-process RNG
# files so it must run on every process into one shared folder (two barriers around the atomic
# rename instead of a main-process write: the ddpo-pytorch hang), and the RNG states, samplers
# and step counter it adds are what this loop does not need (every draw comes from (seed,
# epoch)). What it would keep (optimizer, method buffers, counters, fp16 loss scale) is below.
def save_state(trainer: Trainer, state_dir: Path) -> None:
    """Checkpoint the adapter and atomically replace ``state_dir/latest``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = state_dir / "checkpoints" / f"epoch_{trainer.epoch:04d}"
    save_lora(trainer.pipe.unet, checkpoint)
    pd.DataFrame(trainer.metrics).to_csv(checkpoint / "metrics.csv", index=False)
    (checkpoint / "provenance.json").write_text(json.dumps(provenance(), indent=2) + "\n")

    staging = state_dir / f".latest-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging)
    torch.save(trainer.state_dict(), staging / "trainer.pt")
    (staging / "settings.json").write_text(trainer.fingerprint())
    previous = state_dir / "latest.old"
    shutil.rmtree(previous, ignore_errors=True)
    latest = state_dir / "latest"
    if latest.exists():
        latest.rename(previous)
    staging.rename(latest)
    shutil.rmtree(previous, ignore_errors=True)


def resume(trainer: Trainer, state_dir: Path) -> bool:
    """Load ``state_dir/latest`` (or the copy kept while it was being replaced), if any.

    A state that does not fit this run (other settings, past its last epoch, metrics that do
    not reach its epoch) is refused with a message and left as it is: it holds GPU hours.
    """
    for candidate in (state_dir / "latest", state_dir / "latest.old"):
        if (candidate / "trainer.pt").exists():
            break
    else:
        return False
    saved = (candidate / "settings.json").read_text()
    if saved != trainer.fingerprint():
        raise StateError(
            f"{candidate} was written by a run with other settings; it is left as it is. "
            "Delete that state folder to start afresh, or restore the settings it was made with."
        )
    try:
        state = torch.load(candidate / "trainer.pt", weights_only=False)
        load_lora_state(trainer.pipe.unet, candidate)
        metrics = pd.read_csv(candidate / "metrics.csv").to_dict("records")
    except Exception as error:  # a corrupt state is reported, never overwritten silently
        raise StateError(
            f"cannot read the training state in {candidate}: {error}. It is left as it is: "
            "move it away to start afresh."
        ) from error
    check_state(candidate, state["epoch"], metrics, trainer.training.epochs)
    trainer.metrics = metrics
    trainer.load_state_dict(state)
    print(f"resumed from {candidate} at epoch {trainer.epoch}", flush=True)
    return True


def check_state(folder: Path, epoch: int, metrics: list[dict], epochs: int) -> None:
    """A state continues this run only with one metrics row per epoch, up to ``epochs``."""
    if [int(row["epoch"]) for row in metrics] != list(range(1, epoch + 1)):
        raise StateError(
            f"{folder}/metrics.csv has rows for epochs "
            f"{[int(row['epoch']) for row in metrics]} but the state is at epoch {epoch} "
            "(a truncated or edited file); it is left as it is: move it away to start afresh."
        )
    if epoch > epochs:
        raise StateError(
            f"{folder} is at epoch {epoch}, past training.epochs={epochs}; it is left as it "
            f"is. Ask for at least {epoch} epochs to finish it, or move it away to start afresh."
        )


def publish(state_dir: Path, run_dir: Path, epochs: int) -> None:
    """Copy the finished run's checkpoints and metrics to the workflow outputs, then clear the
    state: a finished run is its outputs, and a later run (new settings, fewer or more epochs)
    starts afresh instead of stopping at, or republishing, this one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = sorted((state_dir / "checkpoints").glob("epoch_*"))
    checkpoints = [c for c in checkpoints if int(c.name.removeprefix("epoch_")) <= epochs]
    target = run_dir / "checkpoints"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for checkpoint in checkpoints:
        shutil.copytree(checkpoint, target / checkpoint.name)
    shutil.copy(checkpoints[-1] / "metrics.csv", run_dir / "metrics.csv")
    shutil.rmtree(state_dir)

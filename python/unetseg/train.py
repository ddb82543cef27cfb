"""Training: BCE + Dice, Adam, a plateau or cosine learning-rate schedule, early stopping,
checkpoints with resume, metrics CSV, training curves and prediction overlays. CPU or CUDA (mixed
precision); several GPUs with ``torchrun`` (DistributedDataParallel)."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from .checkpoint import CHECKPOINT_FORMAT, default_checkpoint_path, load_checkpoint, model_from_checkpoint, save_atomic
from .data import Augment, Normalisation, NucleiDataset, PixelWeights, read_datasets
from .data.dataset import stratum
from .data.readers import Sample
from .device import autocast, resolve_device, resolve_precision
from .io import atomic_path, check_output_folder, write_overlay
from .models import DEFAULT_OPTIONS, build_model
from .models.batch_norm import with_channels_last_batch_norm
from .predict import checkpoint_factor, predict


@dataclass
class TrainConfig:
    data: str | list[str]
    """a dataset path, or several (see unetseg.data.read_datasets)"""
    output: str = "runs/unet"
    architecture: str = "unet"
    model_options: dict[str, Any] | None = None
    """constructor options of the architecture; None: its defaults (unetseg.models.DEFAULT_OPTIONS)"""
    in_channels: int = 3
    out_channels: int = 1
    crop: int = 256
    batch_size: int = 8
    epochs: int = 50
    samples_per_epoch: int | None = None
    lr: float = 1e-3
    lr_schedule: str = "plateau"
    """"plateau": the learning rate halves when the validation loss has not improved for lr_patience
    epochs; "cosine": it falls from lr to 0 along a half cosine over `epochs`, whatever the validation
    loss does (a long run at a sustained rate, annealed at its end)"""
    lr_patience: int = 3
    patience: int = 8
    boundary_weight: float = 2.0
    contact_width: int = 0
    """boundary target also on nucleus pixels within this many pixels of another nucleus (0: off)"""
    rim_fraction: float = 0.0
    """boundary target also on each nucleus's rim, its pixels nearer its edge than this fraction of the
    largest such distance in it (unetseg.data.targets; 0: off)"""
    separation_weight: float = 0.0
    separation_sigma: float = 5.0
    """w0 and sigma of Ronneberger's weight map on the BCE (unetseg.data.separation_weights); w0 0: off"""
    small_object_area: float = 0.0
    """nuclei under this many pixels weigh sqrt(area / a) per pixel in the BCE (unetseg.data.small_object_weights);
    0: off"""
    augment_options: dict[str, Any] = field(default_factory=dict)
    """fields of unetseg.data.Augment that differ from its defaults, e.g. {"elastic": 4, "blur": 1.5}"""
    val_fraction: float = 0.15
    dev_fraction: float = 0.0
    """hold out this fraction of the training images (stratified by kind, fixed by the seed) as a dev
    set: never trained on, not used for early stopping, scored by `unetseg tune` to choose thresholds and
    compare runs while the validation images stay unseen; 0: none"""
    seed: int = 0
    crop_seed: int | None = None
    """seed of the crops, augmentations and batch order; None: `seed`. A run trained on from another
    with the same seed (to keep its split) draws the same crops epoch by epoch as that run did: give
    another crop seed to draw new ones"""
    workers: int = 2
    device: str = "auto"
    imagenet_weights: str | None = None
    max_images: int | None = None
    resume: bool = False
    init_weights: str | None = None
    """start from this checkpoint's weights (fine-tuning; fresh optimizer and schedule); "default": the
    bundled default model's. The split comes from `seed` as in any run: keep the checkpoint's seed so
    its validation images stay unseen"""
    precision: str = "auto"
    """"float32", "bfloat16" (autocast, channels_last; float32 weights and loss) or "auto": bfloat16
    on a CPU with native bfloat16 (AVX512-BF16, AMX) or a bfloat16 GPU, else float32"""
    diameter: float | None = None
    """canonical nucleus diameter (pixels): each image is resized so that its nuclei's median diameter
    becomes this, and the model file records it (inference rescales to it); None: no rescaling"""
    balanced: bool = True
    """each epoch draws its crops balanced by dataset and kind, images in proportion to their area
    (unetseg.data.sampling_probabilities); False: one crop of each training image in turn"""
    sampling_weights: dict[str, float] = field(default_factory=dict)
    """factors on the balanced shares, by dataset name or "dataset:kind" stratum"""
    overwrite: bool = False
    """start a new run in a folder that holds one (its checkpoints and metrics are replaced); without
    it (or `resume`) such a folder is an error, so a run is never overwritten by accident"""
    skip_invalid: bool = False
    """leave out (with a warning) image/label pairs of different sizes instead of stopping"""
    ema: float = 0.0
    """decay of an exponential moving average of the weights (and batch-norm statistics), updated
    after every step; validation, best.pt and the model file use the average (e.g. 0.999: about the
    last 1000 steps); 0: off, the trained weights themselves"""


def make_augment(options: dict[str, Any]) -> Augment:
    """An Augment with `options` overriding its defaults; unknown names are a clear error."""
    known = [f.name for f in fields(Augment)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; known: {known}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return Augment(**options)


def split_by_kind(samples: list[Sample], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A held-out split, stratified by dataset and kind, fixed by the seed: names (train, held out).
    Whole groups (tiles of one source image, ``Sample.group``) fall on one side. Each dataset's split
    is drawn on its own (the seed's generator restarted per dataset), so a dataset splits the same
    whether it is trained on alone or with others."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    train, val = [], []
    previous = None
    for name in sorted({stratum(s) for s in samples}):
        members = [s for s in samples if stratum(s) == name]
        if members[0].dataset != previous:
            rng, previous = np.random.default_rng(seed), members[0].dataset
        groups = sorted({s.split_group for s in members})
        rng.shuffle(groups)
        k = int(round(fraction * len(groups))) if len(groups) > 1 else 0
        k = max(k, 1) if len(groups) > 1 else k
        held = set(groups[:k])
        val += [s.name for s in members if s.split_group in held]
        train += [s.name for s in members if s.split_group not in held]
    if not train or not val:
        raise ValueError(f"{len(samples)} images cannot be split into training and validation")
    return sorted(train), sorted(val)


def crop_to(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The centre of `target` (N, K, H, W) the size of `logits`: a valid-padding U-Net's output is
    smaller than its input by its border, and is scored against the targets' centre, as in the
    U-Net paper (same-padding outputs are the input's size and pass unchanged)."""
    (h, w), (th, tw) = logits.shape[2:], target.shape[2:]
    if (h, w) == (th, tw):
        return target
    if h > th or w > tw:
        raise ValueError(f"the network's output {h}x{w} is larger than its target {th}x{tw}")
    y, x = (th - h) // 2, (tw - w) // 2
    return target[:, :, y : y + h, x : x + w]


def loss_fn(logits: torch.Tensor, target: torch.Tensor, boundary_weight: float) -> torch.Tensor:
    """BCE + soft Dice per output channel; channel 1 (boundaries) weighted by boundary_weight. A target
    with one channel more than the logits carries per-pixel BCE weights in that last channel
    (``NucleiDataset(pixel_weights=...)``): each channel's BCE is then their weighted mean."""
    logits = logits.float()
    channels = logits.shape[1]
    if target.shape[1] not in (channels, channels + 1):
        raise ValueError(
            f"target has {target.shape[1]} channels for {channels} outputs; expected {channels} or "
            f"{channels + 1} (the last one pixel weights)"
        )
    target = crop_to(target, logits)
    target, pixel_weights = target[:, :channels], target[:, channels:]
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if pixel_weights.shape[1]:
        bce = (bce * pixel_weights).sum(dim=(0, 2, 3)) / pixel_weights.sum()
    else:
        bce = bce.mean(dim=(0, 2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    weights = torch.ones_like(bce)
    weights[1:] = boundary_weight
    return ((bce + dice) * weights).sum() / weights.sum()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


RUN_FILES = ("last.pt", "best.pt", "metrics.csv")


def _check_run_folder(out: Path, config: TrainConfig) -> None:
    """A run folder is continued only with `resume` and replaced only with `overwrite`."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if config.resume:
        if not (out / "last.pt").exists():
            raise ValueError(f"nothing to resume in {str(out)!r} (no last.pt); drop --resume to start a new run there")
        if config.overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    elif found and not config.overwrite:
        raise ValueError(
            f"{str(out)!r} holds a training run ({', '.join(found)}); continue it with --resume, "
            "start over there with --overwrite (its checkpoints and metrics are replaced), or give "
            "another -o"
        )


def train(config: TrainConfig, samples: list[Sample] | None = None) -> dict:
    """Trains a model as `config` says; returns the final checkpoint dict (best weights in best.pt)."""
    _check_config(config)
    rank, world, device, precision = _devices(config)
    out = check_output_folder(config.output)
    _check_run_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    samples = samples if samples is not None else read_datasets(config.data, config.skip_invalid)
    if config.max_images:
        samples = samples[: config.max_images]
    split = _split(config, samples)
    by_name = {s.name: s for s in samples}
    model, options, init_split = _build_model(config)
    to_training_layout(model, device)
    optimizer = torch.optim.Adam((p for p in model.parameters() if p.requires_grad), lr=config.lr)
    scheduler = make_scheduler(optimizer, config)
    average = weight_average(model, config.ema)
    evaluated = average.module if average is not None else model
    state = {"history": [], "start_epoch": 0, "best": math.inf, "stale": 0}
    if config.resume:
        state, split = _resume(out / "last.pt", model, optimizer, scheduler, average, config, rank)
    warning = _optimistic_validation_warning(init_split, split, config.init_weights)
    if warning and rank == 0:
        print(warning, flush=True)

    normalisation = Normalisation()
    train_set = _dataset(config, [by_name[n] for n in split["train"]], normalisation, training=True)
    val_set = _dataset(config, [by_name[n] for n in split["val"]], normalisation, training=False)
    if len(train_set) < config.batch_size:
        raise ValueError(
            f"an epoch of {len(train_set)} crops is less than one batch of {config.batch_size}: no "
            "training step would run; lower the batch size or raise samples_per_epoch"
        )
    sampler = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(train_set, world, rank, seed=_crop_seed(config))
    train_loader, val_loader = _loaders(config, train_set, val_set, sampler, device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # float16 needs loss scaling; bfloat16 has float32's range and does not
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "float16")
    meta = _checkpoint_meta(config, options, split, normalisation, precision)

    history, best, stale = state["history"], state["best"], state["stale"]
    for epoch in range(state["start_epoch"], config.epochs):
        train_set.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{config.epochs}"
        train_loss = _train_epoch(
            net, train_loader, optimizer, scaler, average, device, precision, config, desc, rank != 0
        )
        train_time = time.perf_counter() - t0
        with autocast(device, precision):
            val = validate(evaluated, val_loader, device, config.boundary_weight)
        step_schedule(scheduler, val["val_loss"])
        row = {"epoch": epoch + 1, "train_loss": train_loss, **val, "lr": lr}  # the rate this epoch trained at
        history.append({**row, "epoch_seconds": train_time})
        improved = val["val_loss"] < best
        best, stale = (val["val_loss"], 0) if improved else (best, stale + 1)
        if rank == 0:
            ckpt = {
                **meta,
                "state_dict": evaluated.state_dict(),
                **_averaging_state(model, average),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_val_loss": best,
                "epochs_without_improvement": stale,
                "validation": val,
            }
            if improved:
                save_atomic(ckpt, out / "best.pt")
            save_atomic(ckpt, out / "last.pt")
            write_history(history, out)
            print(
                f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val['val_loss']:.4f}, "
                f"val dice {val['val_dice']:.3f}, val DSB {val['val_dsb_score']:.3f}, {train_time:.0f} s"
                f"{' (best)' if improved else ''}",
                flush=True,
            )
        if stale >= config.patience:
            if rank == 0:
                print(f"early stop: no better validation loss for {stale} epochs")
            break
    if rank == 0 and (out / "best.pt").exists():
        best_ckpt = load_checkpoint(out / "best.pt")
        val_samples = [by_name[n] for n in split["val"][:6]]
        save_overlays(model_from_checkpoint(best_ckpt), val_samples, best_ckpt, out / "overlays")
    return load_checkpoint(out / "last.pt") if rank == 0 else {}


LR_SCHEDULES = ("plateau", "cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule `config.lr_schedule` names (TrainConfig), stepped once an epoch."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=config.lr_patience)


def step_schedule(scheduler, val_loss: float) -> None:
    """Ends an epoch of the schedule: the plateau schedule looks at the validation loss, cosine does not."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """The exponential moving average of `model`'s weights and buffers (batch-norm statistics), so
    the averaged network is evaluated as it is; None when `decay` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _averaging_state(model: torch.nn.Module, average: AveragedModel | None) -> dict:
    """What resuming a run with a weight average needs besides the average (the checkpoint's
    ``state_dict``): the trained weights themselves and the number of updates averaged."""
    if average is None:
        return {}
    return {"trained_state_dict": model.state_dict(), "averaged_steps": int(average.n_averaged)}


def _check_config(config: TrainConfig) -> None:
    """Bad values are refused before any work, each naming itself."""
    if not 0 <= config.ema < 1:
        raise ValueError(f"ema must be a decay in [0, 1) (e.g. 0.999; 0: off), got {config.ema}")
    if config.contact_width < 0:
        raise ValueError(f"contact_width must be >= 0 pixels, got {config.contact_width}")
    if not 0 <= config.rim_fraction < 1:
        raise ValueError(f"rim_fraction must be in [0, 1) (e.g. 0.4; 0: off), got {config.rim_fraction}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {config.lr_schedule!r}")
    for name, value, low in (
        ("crop", config.crop, 16),
        ("batch_size", config.batch_size, 1),
        ("epochs", config.epochs, 1),
        ("workers", config.workers, 0),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not config.lr >= 0:
        raise ValueError(f"lr must be a learning rate >= 0, got {config.lr}")


def _devices(config: TrainConfig) -> tuple[int, int, torch.device, str]:
    """This process's rank, the world size, its device (its own GPU under torchrun) and the
    precision ("auto" resolved and said)."""
    rank, world = _distributed()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    precision = resolve_precision(config.precision, device)
    if rank == 0 and config.precision == "auto":
        why = "native bfloat16 on this device" if precision == "bfloat16" else "no native bfloat16 on this device"
        print(f"precision auto: {precision} ({why})", flush=True)
    return rank, world, device, precision


def _split(config: TrainConfig, samples: list[Sample]) -> dict:
    """Training, validation and dev image names (per dataset and kind, with the config's seed)."""
    train_names, val_names = split_by_kind(samples, config.val_fraction, config.seed)
    dev_names: list[str] = []
    if config.dev_fraction:
        kept = set(train_names)
        train_names, dev_names = split_by_kind([s for s in samples if s.name in kept], config.dev_fraction, config.seed)
    return {"train": train_names, "val": val_names, "dev": dev_names, "seed": config.seed}


def to_training_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Moves `model` to `device` in the layout training runs in: channels_last (oneDNN's fast
    convolution layout on the CPU, and tensor cores' on GPUs) and, on the CPU, batch norm that is
    fast in that layout at any channel count (models/batch_norm.py)."""
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cpu":
        with_channels_last_batch_norm(model)
    return model


def _build_model(config: TrainConfig) -> tuple[torch.nn.Module, dict, dict | None]:
    """The network, its constructor options and the --init-weights checkpoint's split (None without
    one), with ImageNet or --init-weights weights loaded."""
    model_options = (
        DEFAULT_OPTIONS.get(config.architecture, {}) if config.model_options is None else config.model_options
    )
    options = {"in_channels": config.in_channels, "out_channels": config.out_channels, **model_options}
    model = build_model(config.architecture, **options)
    if config.imagenet_weights:
        model.load_imagenet_weights(config.imagenet_weights)
    if config.init_weights and not config.resume:
        init = load_checkpoint(default_checkpoint_path() if config.init_weights == "default" else config.init_weights)
        if init["model"] != {"architecture": config.architecture, "options": options}:
            raise ValueError(
                f"--init-weights {config.init_weights} holds a {init['model']} model; this run builds "
                f"{ {'architecture': config.architecture, 'options': options} }: use the same "
                "--architecture, --model-options and channels"
            )
        model.load_state_dict(init["state_dict"])
        return model, options, init.get("split")
    return model, options, None


def _optimistic_validation_warning(init_split: dict | None, split: dict, init_weights: str) -> str | None:
    """What to tell a user whose validation images the --init-weights model trained on (its scores
    there would be optimistic), or None when it trained on none of them."""
    if not init_split:
        return None
    seen = set(init_split["train"]) & set(split["val"])
    if not seen:
        return None
    return (
        f"warning: the --init-weights {init_weights} model trained on {len(seen)} of this run's "
        f"{len(split['val'])} validation images (e.g. {sorted(seen)[0]}), so validation scores will be "
        f"optimistic; its split came from --seed {init_split['seed']}: use that seed to keep its "
        "validation images unseen"
    )


def _resume(path: Path, model, optimizer, scheduler, average, config: TrainConfig, rank: int) -> tuple[dict, dict]:
    """Loads a run's last checkpoint into the model, optimizer, scheduler and weight average;
    returns the loop's state (history, start epoch, best validation loss, epochs without
    improvement) and its split."""
    ckpt = load_checkpoint(path)
    schedule = ckpt["config"].get("lr_schedule", "plateau")
    if schedule != config.lr_schedule:
        raise ValueError(
            f"{path} is a run with the {schedule} learning-rate schedule, asked to resume with "
            f"{config.lr_schedule}: resume it with --lr-schedule {schedule}"
        )
    if schedule == "cosine" and ckpt["config"]["epochs"] != config.epochs:
        # the cosine reaches 0 at the run's last epoch and would climb again past it
        raise ValueError(
            f"{path} is a cosine-schedule run of {ckpt['config']['epochs']} epochs, asked to resume with "
            f"{config.epochs}: resume it with --epochs {ckpt['config']['epochs']}, or fine-tune from its "
            "best.pt with --init-weights for a new schedule"
        )
    if (average is None) != ("trained_state_dict" not in ckpt):
        had = "with" if "trained_state_dict" in ckpt else "without"
        raise ValueError(f"{path} is a run {had} a weight average (--ema): resume it with the same --ema")
    if average is None:
        model.load_state_dict(ckpt["state_dict"])
    else:
        model.load_state_dict(ckpt["trained_state_dict"])
        average.module.load_state_dict(ckpt["state_dict"])
        average.n_averaged.fill_(ckpt["averaged_steps"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if rank == 0:
        print(f"resuming {path} after epoch {ckpt['epoch'] + 1}")
    state = {
        "history": ckpt["history"],
        "start_epoch": ckpt["epoch"] + 1,
        "best": ckpt["best_val_loss"],
        "stale": ckpt["epochs_without_improvement"],
    }
    split = {**ckpt["split"], "dev": ckpt["split"].get("dev", [])}
    return state, split


def _dataset(config: TrainConfig, samples: list[Sample], normalisation, training: bool) -> NucleiDataset:
    """Training crops (random, augmented, balanced) or validation crops (centred), same targets."""
    pixel_weights = None
    if config.separation_weight or config.small_object_area:
        pixel_weights = PixelWeights(config.separation_weight, config.separation_sigma, config.small_object_area)
    return NucleiDataset(
        samples,
        config.in_channels,
        config.out_channels,
        config.crop,
        mode="crop" if training else "center",
        augment=make_augment(config.augment_options) if training else None,
        normalisation=normalisation,
        samples_per_epoch=config.samples_per_epoch if training else None,
        seed=_crop_seed(config),
        contact_width=config.contact_width,
        rim_fraction=config.rim_fraction,
        pixel_weights=pixel_weights,
        diameter=config.diameter,
        balanced=config.balanced and training,
        sampling_weights=config.sampling_weights if training else None,
    )


def _crop_seed(config: TrainConfig) -> int:
    return config.seed if config.crop_seed is None else config.crop_seed


def _loaders(config: TrainConfig, train_set, val_set, sampler, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """The training loader (shuffled or distributed, whole batches) and the validation loader."""
    loader_args = dict(
        batch_size=config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        pin_memory=device.type == "cuda",
    )
    train_loader = DataLoader(
        train_set,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(_crop_seed(config)),
        **loader_args,
    )
    return train_loader, DataLoader(val_set, shuffle=False, **loader_args)


def _checkpoint_meta(config: TrainConfig, options: dict, split: dict, normalisation, precision: str) -> dict:
    """What every checkpoint of the run holds besides its weights and training state."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"architecture": config.architecture, "options": options},
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "output_meaning": ["nucleus", "nucleus boundary"][: config.out_channels],
        "threshold": 0.5,
        "normalisation": normalisation.to_dict(),
        "config": asdict(config),
        "split": split,
        "training_data": str(config.data)
        if isinstance(config.data, (str, os.PathLike))
        else [str(d) for d in config.data],
        "diameter": config.diameter,
        "precision": precision,
    }


def _train_epoch(
    net, loader, optimizer, scaler, average, device, precision: str, config: TrainConfig, desc: str, quiet: bool
):
    """One pass over the training loader (the weight average, if any, updated after every step);
    returns the mean training loss."""
    from tqdm.auto import tqdm

    net.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=quiet)
    for images, target in bar:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(net(images), target, config.boundary_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update_parameters(net)  # DistributedDataParallel's parameters and buffers are its module's
        total, n = total + loss.item() * len(images), n + len(images)
        bar.set_postfix(loss=f"{total / n:.4f}")
    return total / max(n, 1)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, device: torch.device, boundary_weight: float) -> dict:
    from . import metrics
    from .ops import label

    model.eval()
    losses, dices, scores = [], [], []
    for images, target in loader:
        logits = model(images.to(device, memory_format=torch.channels_last)).float()
        target = crop_to(target, logits)
        losses.append(loss_fn(logits, target.to(device), boundary_weight).item() * len(images))
        prob = torch.sigmoid(logits[:, 0]).cpu()
        pred = label(prob, 0.5).labels.numpy()
        for p, t in zip(pred, target[:, 0].numpy()):
            true = label(torch.from_numpy(t > 0.5)).labels.numpy()  # crops' true instances (approximate)
            dices.append(metrics.dice(p > 0, t > 0.5))
            scores.append(metrics.dsb_score(true, p))
    n = len(loader.dataset)
    return {"val_loss": sum(losses) / n, "val_dice": float(np.mean(dices)), "val_dsb_score": float(np.mean(scores))}


def write_history(history: list[dict], out: Path) -> None:
    """metrics.csv and training_curves.png, both written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set(title="loss (BCE + Dice)", xlabel="epoch")
    axes[0].legend()
    axes[1].plot(epochs, [h["val_dice"] for h in history], label="Dice")
    axes[1].plot(epochs, [h["val_dsb_score"] for h in history], label="DSB score (crops)")
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    rates = [h["lr"] for h in history]
    axes[2].plot(epochs, rates)
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log" if min(rates) > 0 else "linear")
    fig.tight_layout()
    with atomic_path(out / "training_curves.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def save_overlays(model, samples: list[Sample], ckpt: dict, folder: Path) -> None:
    from .ops import label

    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        prob = predict(model, s.image, ckpt, factor=checkpoint_factor(ckpt, s.labels))
        pred = label(torch.from_numpy(prob[0]), ckpt["threshold"]).labels.numpy()
        dy, dx = (a - b for a, b in zip(s.labels.shape, pred.shape))  # a valid-padding output's border
        pred = np.pad(pred, ((dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2)))
        write_overlay(folder / f"{s.name.replace('/', '_')[:40]}.png", s.image, pred, s.labels)

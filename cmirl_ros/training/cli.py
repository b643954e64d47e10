"""`cmirl train`: train a place-recognition model from a training config.

    cmirl train --config config/train/cmirl_indoor.yaml --out out/train/cmirl_indoor [--max-steps N] [--resume]

`--model` swaps the network and keeps everything else of the recipe: the paper's ablations
are one training config run with several model configs.

The config names the model (`model:` a config under config/models/), the data
(`data:` dataset, root, seq, frames, stride; the dataset flags override it), the pair
thresholds (`pairs:`), the augmentations (`augment:`) and the recipe (`train:`, `loss:`,
`optim:`). Multi-GPU / multi-node: `torchrun --nproc_per_node G -m cmirl_ros.cli train ...`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train a model (hard-aware lazy triplet loss, modality dropout; resumable; torchrun for DDP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cmirl_ros.datasets import add_dataset_args

    parser.add_argument("--config", required=True, help="training config: a name under config/train/ or a .yaml path")
    parser.add_argument("--out", type=Path, required=True, help="output directory (model + train_state.pt + train_log.csv)")
    parser.add_argument("--model", default=None,
                        help="override the config's model: a name under config/models/ or a .yaml path")
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="preprocessing cache root (default out/cache/frames; train.frame_cache: false = none)")
    add_dataset_args(parser, required=False)
    # The config supplies the dataset; flags given on the command line override it.
    parser.set_defaults(dataset=None)


def set_torch_threads() -> None:
    """CMIRL_TORCH_THREADS caps torch's CPU threads (shared machines, tests)."""
    threads = os.environ.get("CMIRL_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def resolve_root(root: str | Path) -> Path:
    """A relative data root is taken from the working directory, else from the source tree."""
    from cmirl_ros.paths import _SOURCE_ROOT

    root = Path(root)
    if root.is_absolute() or root.exists():
        return root
    beside_source = _SOURCE_ROOT / root
    return beside_source if beside_source.exists() else root


def model_config(spec, config_path: Path):
    """A `.yaml` model path in a training config is relative to that config file."""
    if isinstance(spec, str) and spec.endswith((".yaml", ".yml")) and (config_path.parent / spec).is_file():
        return str(config_path.parent / spec)
    return spec


def data_args(cfg: dict, args: argparse.Namespace, config_path: Path) -> list[dict]:
    """The config's `data:` entries; the dataset flags override a single entry."""
    from cmirl_ros.training.splits import data_entries

    if "data" not in cfg and getattr(args, "root", None) is None:
        raise ValueError(f"{config_path}: no data root (set data.root or pass --root)")
    entries = data_entries(cfg.get("data") or {"root": args.root}, f"{config_path}: data")
    flags = {key: str(getattr(args, key)) for key in ("dataset", "root", "seq", "frames")
             if getattr(args, key, None) is not None}
    if flags and len(entries) > 1:
        raise ValueError(f"{config_path}: --{'/--'.join(flags)} override a single data entry, the config lists {len(entries)}")
    entries[0].update(flags)
    return entries


def open_data(cfg: dict, args: argparse.Namespace, config_path: Path):
    """(training dataset, validation dataset or None, the entries as used); test frames are refused."""
    from cmirl_ros.training.splits import check_disjoint, data_entries, open_entries

    training, used = open_entries(data_args(cfg, args, config_path), "training", resolve_root)
    validation = None
    if cfg.get("validation"):
        entries = data_entries(cfg["validation"], f"{config_path}: validation")
        validation, _ = open_entries(entries, "validation", resolve_root)
        check_disjoint(training, validation)
    return training, validation, used


def training_frames(dataset, model, cfg: dict, settings, cache_dir: Path | None, progress: bool):
    """The inputs of a dataset, from the preprocessing cache unless `train.frame_cache` is false."""
    from cmirl_ros.training.augment import AugmentConfig
    from cmirl_ros.training.data import TrainingFrames
    from cmirl_ros.training.frame_cache import DEFAULT_CACHE_DIR, CachedTrainingFrames

    augment = AugmentConfig.from_config(cfg.get("augment"))
    if not settings.frame_cache:
        return TrainingFrames(dataset, model.preprocessing, augment, settings.cloud_probability)
    return CachedTrainingFrames(dataset, model.preprocessing, augment, settings.cloud_probability,
                                cache_dir or DEFAULT_CACHE_DIR, settings.cloud_variants, settings.seed, progress)


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from cmirl_ros.config import load_yaml, resolve_config
    from cmirl_ros.atomic import atomic_write_text
    from cmirl_ros.models import build_model, resolve_device, save_checkpoint
    from cmirl_ros.training.pairs import PairRule
    from cmirl_ros.training.trainer import Trainer, TrainSettings, ValidationProtocol, init_distributed

    set_torch_threads()
    config_path = resolve_config(args.config, "train")
    cfg = load_yaml(config_path)
    if args.model is not None:
        cfg["model"] = str(Path(args.model).resolve()) if Path(args.model).is_file() else args.model
    if "model" not in cfg:
        raise ValueError(f"{config_path}: missing 'model' (a config name under config/models/ or a path)")
    settings = TrainSettings.from_config(cfg)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        settings.max_steps = args.max_steps
    dataset, validation, used_data = open_data(cfg, args, config_path)

    device = resolve_device(args.device)
    env = init_distributed(device)
    if device.type == "cuda" and env.world > 1:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(settings.seed)  # identical initial weights on every rank
    model = build_model(model_config(cfg["model"], config_path))
    progress = not args.no_progress and env.is_main
    frames = training_frames(dataset, model, cfg, settings, args.cache_dir, progress)
    val_frames = None if validation is None else training_frames(validation, model, cfg, settings, args.cache_dir, progress)
    trainer = Trainer(model, frames, PairRule.from_config(cfg.get("pairs") or {}), settings, args.out, device,
                      save_model=save_checkpoint, env=env, validation=val_frames, progress=progress,
                      validation_protocol=ValidationProtocol.from_config(cfg.get("validation_protocol")))
    if args.resume and trainer.resume():
        print(f"resumed from {args.out} at step {trainer.step}")
    elif not args.resume and (args.out / "train_state.pt").exists():
        raise ValueError(f"{args.out}: holds a training run already; pass --resume or choose another --out")
    if env.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        entries = [{k: str(v) if isinstance(v, Path) else v for k, v in vars(d).items()} for d in used_data]
        used = {**cfg, "data": entries[0] if len(entries) == 1 else entries}
        atomic_write_text(args.out / "train_config.yaml", yaml.safe_dump(used, sort_keys=False))
    summary = trainer.fit(progress=not args.no_progress)
    if env.is_main:
        print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; final loss {summary['final_loss']:.4f}; "
              f"model in {args.out}")
    return 0

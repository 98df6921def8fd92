"""Train a certified-robust LipConvNet (SOC or GS orthogonal convolutions) and certify it.

Paper §5.3 schedule: SGD lr 0.1, momentum 0.9, weight decay 5e-4, lr ×0.1 at 50% and 75% of the
epochs, random crop + horizontal flip; clean and certified (ℓ2, ε = 36/255) accuracy after
every epoch. Examples::

    # LipConvNet-15, GS-SOC groups (4, -), CIFAR-100 from a local folder
    python -m recipes.lipconvnet.train --dataset cifar100 --data_dir ~/data/cifar \\
        --conv gs --groups 4 --output_dir runs/gs-lipconvnet

    # the bundled scikit-learn digits (no download; flips are off for digits)
    python -m recipes.lipconvnet.train --dataset digits --depth 5 --init_channels 16 \\
        --epochs 12 --output_dir runs/digits

Outputs in ``--output_dir``: ``model.safetensors`` + ``model_config.json`` (rebuild with
``sorth.nn.LipConvNet(**config)``), ``metrics.json``, ``curves.png`` and resumable
``checkpoints/checkpoint-N`` (``--resume_from_checkpoint latest``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recipes.common import (
    RecipeError,
    StepTimer,
    atomic_file,
    cli,
    parse_config,
    require_dir,
    save_json,
    save_png,
)
from recipes.lipconvnet.config import LipConvNetConfig
from recipes.output_dir import claim_output_dir, commit_output_dir
from recipes.training import (
    fast_forward,
    find_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    train_steps,
)

__all__ = ["build_model", "main", "run"]


def build_model(
    cfg: LipConvNetConfig, in_channels: int, num_classes: int
) -> tuple[Any, dict[str, Any]]:
    """The LipConvNet and the keyword arguments that rebuild it (saved as model_config.json)."""
    from sorth.nn import CIFAR_MEAN, CIFAR_STD, LipConvNet

    kwargs: dict[str, Any] = {
        "depth": cfg.depth, "conv": cfg.conv, "init_channels": cfg.init_channels,
        "num_classes": num_classes, "in_channels": in_channels, "image_size": 32,
        "groups": [cfg.groups, cfg.groups_1x1 or None],
        "activation": None if cfg.activation == "auto" else cfg.activation,
    }  # fmt: skip
    if cfg.dataset != "digits":
        kwargs |= {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    try:
        return LipConvNet(**{**kwargs, "groups": tuple(kwargs["groups"])}), kwargs
    except ValueError as err:  # sorth's input errors name the value and the fix
        raise RecipeError(str(err)) from None


def _datasets(cfg: LipConvNetConfig) -> tuple[Any, Any, int, int]:
    """(train, test, in_channels, num_classes), subsampled if asked."""
    import torch
    from torch.utils.data import Subset

    from sorth.nn import load_cifar, load_digits_dataset

    if cfg.dataset == "digits":
        train, test = load_digits_dataset(32, seed=cfg.seed)
        channels, classes = 1, 10
    else:
        if not cfg.data_dir:
            raise RecipeError(f"--dataset {cfg.dataset} needs --data_dir (nothing is downloaded)")
        root = require_dir(cfg.data_dir, "--data_dir")
        try:
            train = load_cifar(root, cfg.dataset, train=True)
            test = load_cifar(root, cfg.dataset, train=False)
        except FileNotFoundError as err:
            raise RecipeError(str(err)) from None
        channels, classes = 3, 10 if cfg.dataset == "cifar10" else 100
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.train_samples and cfg.train_samples < len(train):
        train = Subset(
            train, torch.randperm(len(train), generator=gen)[: cfg.train_samples].tolist()
        )
    if cfg.test_samples and cfg.test_samples < len(test):
        test = Subset(test, torch.randperm(len(test), generator=gen)[: cfg.test_samples].tolist())
    return train, test, channels, classes


def _random_crop(x: Any, padding: int, generator: Any) -> Any:
    """Random crop with zero padding of a batch ``(N, C, H, W)``, no flip."""
    import torch
    import torch.nn.functional as F

    N, _, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)  # (N, C, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, N), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, a : a + H, b : b + W] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )


def _plot(history: list[dict[str, Any]], eps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["accuracy"] for h in history], marker="o", label="clean")
    ax.plot(
        epochs,
        [h["certified_accuracy"] for h in history],
        marker="s",
        label=f"certified, ε={eps:.3f}",
    )
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)


OUTPUTS = ("model.safetensors", "model_config.json", "metrics.json", "curves.png", "checkpoints")


def run(cfg: LipConvNetConfig) -> dict[str, Any]:
    """Train and certify; write the model, metrics, curves; return the metrics."""
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from sorth.nn import augment_crop_flip, certified_accuracy

    _, run_id = claim_output_dir(cfg, OUTPUTS, write=False)  # refuse before any work
    resume = find_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint, run_id=run_id)
    accelerator = make_accelerator(seed=cfg.seed)
    train, test, channels, classes = _datasets(cfg)
    model, model_kwargs = build_model(cfg, channels, classes)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train, cfg.batch_size, shuffle=True, generator=gen, drop_last=len(train) > cfg.batch_size
    )
    test_loader = DataLoader(test, 256)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    milestones = [max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.1 ** sum(epoch >= m for m in milestones)
    )
    augment = {"auto": "crop" if cfg.dataset == "digits" else "crop_flip"}.get(
        cfg.augment, cfg.augment
    )
    step, history = 0, []
    if resume is not None:
        state = load_checkpoint(resume, accelerator.unwrap_model(model), optimizer, run_id=run_id)
        step, history = state["step"], state.get("history", [])
        fast_forward(scheduler, state.get("epoch", 0))
    out = commit_output_dir(cfg, OUTPUTS, accelerator)  # main process writes run.json
    timer = StepTimer()
    show = cfg.progress and accelerator.is_local_main_process
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = len(train_loader)
    bar = tqdm(total=0, disable=not show, leave=False)

    def new_epoch(epoch: int) -> None:  # checkpoints are per epoch: no batch is ever skipped
        model.train()
        aug_gen.manual_seed(cfg.seed + 1 + epoch)
        bar.reset(total=per_epoch)
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")

    def loss_fn(batch: Any) -> Any:
        x, y = batch
        if augment == "crop_flip":
            x = augment_crop_flip(x, 4, generator=aug_gen)
        elif augment == "crop":  # digits are not mirror-symmetric: no flips
            x = _random_crop(x, 4, aug_gen)
        return torch.nn.functional.cross_entropy(model(x), y)

    def after_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step % per_epoch:
            return
        epoch = step // per_epoch
        scheduler.step()
        cert = certified_accuracy(accelerator.unwrap_model(model), test_loader, cfg.eps)
        history.append(
            {"epoch": epoch, "step": step, "loss": loss, "accuracy": cert.clean,
             "certified_accuracy": cert.at(cfg.eps), "mean_radius": cert.mean_radius}
        )  # fmt: skip
        if show:
            tqdm.write(
                f"epoch {epoch}: loss {loss:.3f}, clean {cert.clean:.3f}, "
                f"certified {cert.at(cfg.eps):.3f} (ε={cfg.eps:.3f})"
            )
        save_checkpoint(
            accelerator, model, optimizer, step, out, run_id=run_id,
            total_limit=cfg.checkpoints_total_limit,
            extra={"epoch": epoch, "history": history}, full_state=True,
        )  # fmt: skip

    train_steps(
        accelerator, [model], optimizer, train_loader, loss_fn=loss_fn, params=[],
        start=step, total=cfg.epochs * per_epoch, on_epoch_start=new_epoch,
        on_step=after_step, timer=timer,
    )  # fmt: skip
    bar.close()
    result = {
        "config": asdict(cfg),
        "model_config": model_kwargs,
        "trainable_parameters": params,
        "seconds_per_step": timer.mean,
        "eps": cfg.eps,
        "history": history,
    }
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        with atomic_file(out / "model.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
        save_json(model_kwargs, out / "model_config.json")
        save_json(result, out / "metrics.json")
        _plot(history, cfg.eps, out / "curves.png")
    accelerator.wait_for_everyone()
    return result


@cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring)."""
    cfg = parse_config(
        LipConvNetConfig, argv, __doc__.split("\n\n")[0], prog="python -m recipes.lipconvnet.train"
    )
    result = run(cfg)
    last = result["history"][-1]
    print(
        f"{result['trainable_parameters']:,} params, {result['seconds_per_step']:.3f} s/step; "
        f"clean {last['accuracy']:.3f}, "
        f"certified {last['certified_accuracy']:.3f} at ε={cfg.eps:.4f}"
    )
    print(f"model saved to {Path(cfg.output_dir) / 'model.safetensors'}")
    return result


if __name__ == "__main__":
    main()

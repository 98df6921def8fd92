"""``sorth merge``: fold an adapter into its base model and save plain safetensors weights."""

from __future__ import annotations

import argparse
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sorth.cli.common import (
    CONFIG_NAME,
    CLIError,
    adapter_dirs,
    progress_bar,
    quiet_libraries,
    read_json,
    read_model_config,
    require_dir,
)

__all__ = ["add_parser", "merge_adapter", "run"]


def _load_base(base: Path, adapter: Path | None) -> tuple[str, Any]:
    """``(kind, object)``: a transformers model, a diffusers model, or a diffusers pipeline.

    A transformers model is loaded with the head its adapter was trained on (``adapter``'s
    recorded class or task type), else with the class its ``config.json`` names.
    """
    if (base / "model_index.json").is_file():
        from diffusers import DiffusionPipeline

        return "pipeline", DiffusionPipeline.from_pretrained(base)
    if not (base / "config.json").is_file():
        raise CLIError(f"base model '{base}' has no config.json or model_index.json")
    config = read_json(base / "config.json")
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "quantized")
        raise CLIError(
            f"base model '{base}' is a {method} quantized checkpoint; `sorth merge` writes plain "
            "full-precision weights: pass the full-precision model it was quantized from (an "
            "adapter trained on the quantized base fits it), or merge into the quantized model "
            "in Python with PeftModel.from_pretrained(model, adapter).merge_and_unload()"
        )
    if "_class_name" in config:  # a single diffusers model (UNet2DConditionModel, ...)
        import diffusers

        cls = getattr(diffusers, config["_class_name"], None)
        if cls is None:
            raise CLIError(f"diffusers has no class {config['_class_name']!r} (from {base})")
        return "diffusers", cls.from_pretrained(base)
    import transformers

    names, kwargs = list(config.get("architectures") or []), {}
    if adapter is not None:
        from sorth.integrations.transformers import adapter_head

        try:
            wanted, kwargs = adapter_head(adapter)
        except (OSError, ValueError) as err:
            raise CLIError(f"cannot read the adapter config in '{adapter}': {err}") from None
        names = [wanted, *names] if wanted else names
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise CLIError(f"base model '{base}': no transformers class among {names}")
    return "transformers", cls.from_pretrained(base, **kwargs)


def _merge_into(model: Any, adapter_dir: Path, where: str) -> Any:
    """``sorth.integrations.peft.load_adapter(..., merge=True)`` with one-line errors."""
    from sorth.errors import SOrthValueError
    from sorth.integrations.peft import load_adapter

    try:
        return load_adapter(model, adapter_dir, merge=True)
    except (SOrthValueError, ValueError, KeyError, RuntimeError) as err:
        line = " ".join(str(err).split())
        raise CLIError(f"adapter '{adapter_dir}' does not fit {where}: {line}") from None


def _copy_extras(base: Path, out: Path) -> None:
    """Copy tokenizer and other non-weight files the save did not write (top level only)."""
    weights = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith(weights) and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


def _check_clean(out: Path) -> None:
    """The merged checkpoint must hold plain weights: no sorth or PEFT wrapper keys."""
    from safetensors import safe_open

    for f in out.rglob("*.safetensors"):
        with safe_open(f, "pt") as handle:
            bad = [k for k in handle.keys() if "sorth_" in k or ".base_layer." in k]  # noqa: SIM118
        if bad:
            raise RuntimeError(f"merged checkpoint {f} still holds adapter keys, e.g. {bad[0]}")


def merge_adapter(
    base_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    components: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge an adapter into its base model and save plain safetensors weights to ``out_dir``.

    ``W' = diag(s) · A_out · W · A_in`` per adapted layer (`sorth.tuner.layer`), so the
    result loads with ``from_pretrained`` of transformers / diffusers and needs no sorth.
    ``base_dir`` is a transformers model, a diffusers model, or a diffusers pipeline
    (``model_index.json``); for a pipeline, ``adapter_dir`` holds one adapter per component in
    sub-folders named after them (``unet/``, ``text_encoder/``) or a single adapter applied to
    ``components[0]`` (default ``unet``). Any PEFT adapter type works (sorth, LoRA, OFT, ...).
    The folder is written atomically (a temporary sibling, then renamed).

    Raises:
        CLIError: bad paths, an existing ``out_dir`` without ``overwrite``, or an adapter that
            does not fit the base model.
    """
    base = require_dir(base_dir, "base model folder")
    adapter = require_dir(adapter_dir, "adapter folder")
    out = Path(out_dir).expanduser()
    _check_out(out, out_dir, base, adapter, overwrite)
    adapters = adapter_dirs(adapter, components)
    bar = progress_bar("merge: load base", 3)
    try:
        libraries = ["transformers"]
        if (base / "model_index.json").is_file() or "_class_name" in read_model_config(base):
            libraries.append("diffusers")
        with warnings.catch_warnings(), quiet_libraries(*libraries):
            warnings.simplefilter("ignore", FutureWarning)  # library deprecation notices
            obj = _merge_all(base, adapter, adapters, components, bar)
            bar.set_description_str("merge: save")
            _save_atomic(obj, base, out)
        bar.update()
    finally:
        bar.close()
    return out


def _check_out(out: Path, out_dir: Any, base: Path, adapter: Path, overwrite: bool) -> None:
    """Refuse, before anything is loaded or touched, an output that would destroy an input.

    ``--overwrite`` replaces ``out`` as a whole, so ``out`` must not be (or contain) the base
    model or the adapter folder, and it must be a folder, not a file.
    """
    if out.exists() and not out.is_dir():
        raise CLIError(f"output '{out_dir}' is a file; pass a folder to write the merged model to")
    target = out.resolve()
    for what, folder in (("base model", base), ("adapter", adapter)):
        inside = folder.resolve()
        if inside == target or target in inside.parents:
            raise CLIError(
                f"output '{out_dir}' contains the {what} folder '{folder}': writing there would "
                "delete it; pass another --out"
            )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"output '{out_dir}' already exists and is not empty (use --overwrite)")


def _merge_all(
    base: Path,
    adapter: Path,
    adapters: dict[str | None, Path],
    components: Sequence[str] | None,
    bar: Any,
) -> Any:
    kind, obj = _load_base(base, adapters.get(None))
    bar.update()
    bar.set_description_str("merge: fold adapter")
    if kind == "pipeline":
        default = (components or ["unet"])[0]
        for comp, folder in adapters.items():
            name = comp or default
            module = getattr(obj, name, None)
            if module is None:
                raise CLIError(f"pipeline '{base}' has no component {name!r}")
            setattr(obj, name, _merge_into(module, folder, f"{base}/{name}"))
    else:
        if None not in adapters:
            raise CLIError(f"adapter folder '{adapter}' has no {CONFIG_NAME}")
        obj = _merge_into(obj, adapter, str(base))
    bar.update()
    return obj


def _save_atomic(obj: Any, base: Path, out: Path) -> None:
    """``save_pretrained`` into a temporary sibling of ``out``, check it, then swap it in."""
    from sorth.integrations.io import atomic_dir

    with atomic_dir(out) as tmp:
        obj.save_pretrained(tmp)
        _copy_extras(base, tmp)
        _check_clean(tmp)


def add_parser(sub: Any) -> None:
    """The ``sorth merge`` sub-parser, added to ``sub`` (the ``sorth`` command's sub-parsers)."""
    mer = sub.add_parser(
        "merge",
        help="merge an adapter into its base model (plain safetensors)",
        description="Fold the adapter into the weights (W' = diag(s)·A_out·W·A_in) and write a "
        "model that loads with plain transformers/diffusers from_pretrained, without sorth.",
    )
    mer.add_argument("--base", required=True, metavar="MODEL_DIR", help="base model folder")
    mer.add_argument("--adapter", required=True, metavar="ADAPTER_DIR", help="adapter folder")
    mer.add_argument("--out", required=True, metavar="OUT_DIR", help="folder to write")
    mer.add_argument(
        "--component", action="append", metavar="NAME", help="pipeline component(s) to merge "
        "into (default: every adapter sub-folder, or unet for a single adapter)",
    )  # fmt: skip
    mer.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


def run(args: argparse.Namespace) -> int:
    """``sorth merge``: :func:`merge_adapter` with the command's arguments."""
    out = merge_adapter(
        args.base, args.adapter, args.out, components=args.component, overwrite=args.overwrite
    )
    print(f"merged model written to {out} (safetensors; loads without sorth)")
    return 0

"""``sorth inspect``: describe a saved sorth adapter without loading its base model."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any

from sorth.cli.common import (
    CONFIG_NAME,
    EXIT_ERROR,
    WEIGHTS_NAME,
    CLIError,
    adapter_dirs,
    natural_key,
    progress_iter,
    read_json,
    require_dir,
)

__all__ = ["DENSE_CHECK_MAX_N", "add_parser", "inspect_adapter", "print_inspect", "run"]

DENSE_CHECK_MAX_N = 4096  # above this, the orthogonality error is measured block by block
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<layer>.+?)\.(?P<part>sorth_in|sorth_out)\.params\.(?P<i>\d+)$"
)
_SCALE = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+?)\.sorth_s$")


def _rotation_from_params(
    config: dict[str, Any], params: list[Any], where: str
) -> tuple[Any, dict[str, Any]]:
    """Rebuild the `sorth.GSOrthogonal` of one side of one layer from its saved tensors."""
    from sorth.errors import SOrthValueError
    from sorth.parametrizations import GSOrthogonal

    structure, storage = config.get("structure", "gs"), config.get("storage", "skew")
    first = params[0]
    r = first.shape[0]
    if storage == "full":
        b = first.shape[-1]
    else:  # (r, b(b-1)/2): solve for b
        b = int((1 + (1 + 8 * first.shape[-1]) ** 0.5) / 2 + 0.5)
        if b * (b - 1) // 2 != first.shape[-1]:
            raise CLIError(f"{where}: tensor of shape {tuple(first.shape)} is not skew storage")
    kwargs = {
        "nblocks": r,
        "structure": structure,
        "orthogonal_map": _orthogonal_map(config),
        "storage": storage,
        "neumann_terms": config.get("neumann_terms", 5),
    }
    if structure in ("gs", "butterfly"):
        kwargs["n_factors"] = len(params)
    try:
        q = GSOrthogonal(r * b, **kwargs)
        q.load_state_dict({f"params.{i}": p for i, p in enumerate(params)})
    except (SOrthValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()
        raise CLIError(
            f"{where} does not fit adapter_config.json (structure={structure!r}, "
            f"storage={storage!r}): {detail[-1] if detail else err}"
        ) from None
    return q, {"n": q.n, "nblocks": q.nblocks, "block_size": q.block_size}


def _orthogonal_map(config: dict[str, Any]) -> str:
    """The orthogonal map of a saved ``adapter_config.json``; folders saved before the
    ``orthogonal_map`` name call it ``"method"`` (Note [old adapter folders] in
    :mod:`sorth.tuner.config`)."""
    return config.get("orthogonal_map", config.get("method", "cayley"))


def _measure(q: Any, density_cache: dict[tuple, float]) -> dict[str, Any]:
    """Parameters, structural density and orthogonality error of one rotation."""
    import torch

    from sorth.gs import GSMatrix
    from sorth.orthogonal import orthogonality_error
    from sorth.plotting import chain_support

    key = (q.n, q.nblocks, q.structure, q.n_factors)
    with torch.no_grad():
        matrix = q.matrix(dtype=torch.float64)
        if key not in density_cache:
            density_cache[key] = float(
                chain_support(GSMatrix(matrix.factors, q.perms)).float().mean()
            )
        if q.n <= DENSE_CHECK_MAX_N:
            err, how = float(orthogonality_error(matrix.to_dense())), "dense"
        else:  # Q is a product of permutations and block-orthogonal factors
            err = max(float(orthogonality_error(B)) for B in matrix.factors)
            how = "blocks"
    return {
        "structure": q.structure,
        "factors": q.n_factors,
        "params": q.num_parameters,
        "density": density_cache[key],
        "orth_error": err,
        "orth_error_of": how,
    }


def inspect_adapter(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Describe a saved sorth adapter without loading its base model.

    Returns a dict with the adapter ``config`` and, per adapted layer, its rotations (``in`` /
    ``out``: ``n``, ``nblocks``, ``block_size``, ``factors``, ``params``, ``density``,
    ``orth_error`` = ``max|QᵀQ − I|`` in float64) and scale size; ``total_params`` counts every
    saved tensor (rotations, scales, and e.g. a classifier head in ``other``).

    Raises:
        CLIError: missing files, a non-sorth adapter, or tensors that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = require_dir(adapter_dir, "adapter folder", [CONFIG_NAME])
    config = read_json(path / CONFIG_NAME)
    if str(config.get("peft_type", "")).upper() != "SORTH":
        raise CLIError(
            f"'{adapter_dir}' holds a {config.get('peft_type', 'unknown')} adapter, not a sorth "
            "one (peft_type must be SORTH); `sorth merge` still merges any PEFT adapter"
        )
    if not (path / WEIGHTS_NAME).is_file():
        raise CLIError(f"adapter folder '{adapter_dir}' has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(path / WEIGHTS_NAME)
    except (SafetensorError, OSError) as err:
        raise CLIError(f"cannot read {path / WEIGHTS_NAME}: {err}") from None
    grouped: dict[str, dict[str, dict[int, Any]]] = {}
    scales: dict[str, int] = {}
    other: dict[str, int] = {}
    for key, t in tensors.items():
        if m := _KEY.match(key):
            side = grouped.setdefault(m["layer"], {}).setdefault(m["part"], {})
            side[int(m["i"])] = t
        elif m := _SCALE.match(key):
            scales[m["layer"]] = t.numel()
        else:
            other[key.removeprefix("base_model.model.")] = t.numel()
    if not grouped:
        raise CLIError(f"{path / WEIGHTS_NAME} holds no sorth rotation tensors")
    layers, cache = [], {}
    for name in progress_iter(sorted(grouped, key=natural_key), "inspect", len(grouped)):
        entry: dict[str, Any] = {"layer": name, "scale": scales.get(name, 0)}
        for part, label in (("sorth_in", "in"), ("sorth_out", "out")):
            if part in grouped[name]:
                found = grouped[name][part]
                params = [found[i] for i in sorted(found)]
                q, sizes = _rotation_from_params(config, params, f"{name}.{part}")
                entry[label] = {**sizes, **_measure(q, cache)}
        entry["params"] = entry["scale"] + sum(
            entry[s]["params"] for s in ("in", "out") if s in entry
        )
        layers.append(entry)
    from sorth.integrations.methods import method_of

    errors = [e[s]["orth_error"] for e in layers for s in ("in", "out") if s in e]
    return {
        "adapter_dir": str(path),
        "method": method_of(config),
        "nonfinite_tensors": sorted(
            k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()
        ),
        # nan if any rotation is not finite: max() would silently skip a nan
        "worst_orth_error": _worst(errors),
        "config": config,
        "layers": layers,
        "other": other,
        "total_params": sum(t.numel() for t in tensors.values()),
    }


def _worst(errors: list[float]) -> float:
    if any(not math.isfinite(e) for e in errors):
        return math.nan
    return max(errors, default=0.0)


def print_inspect(info: dict[str, Any]) -> None:
    """Print :func:`inspect_adapter`'s report as a table (one row per rotation)."""
    c = info["config"]
    if c.get("block_size"):
        size = f"block_size={c['block_size']}"
    elif c.get("nblocks"):
        size = f"nblocks={c['nblocks']}"
    else:  # per layer: smallest divisor b >= sqrt(n) (sorth.sizing); see the r×b column
        size = "block_size=auto(b>=√n)"
    targets = c.get("target_modules")
    if isinstance(targets, list):
        targets = ", ".join(sorted(targets))
    print(f"sorth adapter {info['adapter_dir']}")
    print(
        f"  base model: {c.get('base_model_name_or_path')}  |  method={info['method']} "
        f"structure={c.get('structure')} "
        f"side={c.get('side')} {size} orthogonal_map={_orthogonal_map(c)} "
        f"storage={c.get('storage')} "
        f"scale={c.get('scale')}"
    )
    print(f"  targets: {targets}")
    head = f"{'layer':<44}{'side':>5}{'n':>7}{'r×b':>10}{'m':>3}{'params':>10}{'density':>9}"
    print(head + f"{'max|QᵀQ−I|':>12}")
    for entry in info["layers"]:
        first = True
        for side in ("in", "out"):
            if side not in entry:
                continue
            q = entry[side]
            star = "" if q["orth_error_of"] == "dense" else "*"
            name = entry["layer"] if first else ""
            print(
                f"{name[-44:]:<44}{side:>5}{q['n']:>7}{q['nblocks']:>5}×{q['block_size']:<4}"
                f"{q['factors']:>3}{q['params']:>10,}{q['density']:>9.3f}"
                f"{q['orth_error']:>11.1e}{star}"
            )
            first = False
        if entry["scale"]:
            print(f"{'':<44}{'s':>5}{entry['scale']:>7}{'':>13}{entry['scale']:>10,}")
    rot = sum(entry["params"] for entry in info["layers"])
    print(
        f"{len(info['layers'])} adapted layers, {rot:,} adapter parameters"
        + (
            f" + {sum(info['other'].values()):,} in {len(info['other'])} other tensors"
            if info["other"]
            else ""
        )
        + f"; total {info['total_params']:,}; worst max|QᵀQ−I| = {info['worst_orth_error']:.1e}"
    )
    if info["nonfinite_tensors"]:
        print(f"NOT FINITE: {len(info['nonfinite_tensors'])} tensor(s) hold NaN or Inf, e.g. "
              f"{info['nonfinite_tensors'][0]}")  # fmt: skip
    if any(
        e[s]["orth_error_of"] == "blocks" for e in info["layers"] for s in ("in", "out") if s in e
    ):
        print(f"* n > {DENSE_CHECK_MAX_N}: error of the orthogonal blocks (Q is their product)")


def add_parser(sub: Any) -> None:
    """The ``sorth inspect`` sub-parser, added to ``sub`` (the ``sorth`` command's sub-parsers)."""
    ins = sub.add_parser(
        "inspect",
        help="describe a saved sorth adapter",
        description="Structure, sizes, trainable parameters per layer and in total, density and "
        "orthogonality error max|QᵀQ−I| (float64) of every adapted layer. Reads only the adapter "
        "folder (adapter_config.json + adapter_model.safetensors, or one sub-folder per pipeline "
        "component such as unet/), not the base model.",
    )
    ins.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="folder written by save_pretrained")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """``sorth inspect``: print the report of every adapter folder; status 1 when a saved tensor
    holds NaN or Inf (Note [non-finite]: the table is printed, then one line)."""
    folder = require_dir(args.adapter_dir, "adapter folder")
    parts = adapter_dirs(folder, None)  # one adapter, or one per pipeline component
    infos = {comp: inspect_adapter(path) for comp, path in parts.items()}
    if args.json:
        print(json.dumps(infos.get(None, infos), indent=2, default=str))
    else:
        for info in infos.values():
            print_inspect(info)
    broken = [(info, info["nonfinite_tensors"]) for info in infos.values()]
    broken = [(info, keys) for info, keys in broken if keys]
    if broken:
        info, keys = broken[0]
        sys.stderr.write(
            f"sorth inspect: error: {info['adapter_dir']}: {len(keys)} saved tensor(s) hold "
            f"NaN or Inf (e.g. {keys[0]}); this adapter is broken\n"
        )
        return EXIT_ERROR
    return 0

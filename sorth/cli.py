"""The `sorth` command: inspect and merge adapters, draw GS structure, run the demo.

::

    sorth inspect ADAPTER_DIR                    # structure, sizes, parameters, density, ‖QᵀQ−I‖
    sorth merge --base MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR
    sorth plot --n 64 --nblocks 8 --structure gs --out fig.png
    sorth demo                                   # the README's main job

Every command has ``--help``. Bad paths, adapters that do not fit and invalid sizes end with
one line on stderr (``sorth <command>: error: …``) and exit status 2; an unexpected failure
exits with status 1 (``--traceback`` shows the stack). Heavy libraries (PEFT, transformers,
diffusers, matplotlib) are imported only by the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import runpy
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CLIError", "demo_entry", "inspect_adapter", "main", "merge_adapter"]

EXIT_ERROR, EXIT_USAGE = 1, 2
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
DENSE_CHECK_MAX_N = 4096  # above this, the orthogonality error is measured block by block
# Note [demo]: `sorth demo` runs the first of these that exists, the same module `make demo` runs
# (tests/cli/test_cli.py checks they agree); recipes/ lives in the repository, next to sorth/.
DEMO_MODULES = ("recipes.demo", "sorth.demo")
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<layer>.+?)\.(?P<part>sorth_in|sorth_out)\.params\.(?P<i>\d+)$"
)
_SCALE = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+?)\.sorth_s$")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------- helpers


def _progress(items: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm progress bar on stderr (shown on a terminal only), or the items as they are."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, disable=None, leave=False, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_description_str(self, desc: str) -> None: ...
    def close(self) -> None: ...


def _bar(desc: str, total: int) -> Any:
    """A manual tqdm bar for work done in stages (``update()`` after each)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=None, leave=False, file=sys.stderr)


def _require_dir(path: str | os.PathLike, what: str, must_hold: Sequence[str] = ()) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{what} '{path}' does not exist")
    if not p.is_dir():
        raise CLIError(f"{what} '{path}' is a file; pass the folder that holds it")
    for name in must_hold:
        if not (p / name).is_file():
            raise CLIError(f"{what} '{path}' has no {name}: is it the right folder?")
    return p


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CLIError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} is not a JSON object")
    return data


def _read_json_or_empty(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return _read_json(path) if path.is_file() else {}


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


# ------------------------------------------------------------------------------- inspect


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
        "method": config.get("method", "cayley"),
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

    path = _require_dir(adapter_dir, "adapter folder", [CONFIG_NAME])
    config = _read_json(path / CONFIG_NAME)
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
    for name in _progress(sorted(grouped, key=_natural), "inspect", len(grouped)):
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
    return {
        "adapter_dir": str(path),
        "config": config,
        "layers": layers,
        "other": other,
        "total_params": sum(t.numel() for t in tensors.values()),
    }


def _print_inspect(info: dict[str, Any]) -> None:
    c = info["config"]
    size = f"block_size={c['block_size']}" if c.get("block_size") else f"nblocks={c.get('nblocks')}"
    targets = c.get("target_modules")
    if isinstance(targets, list):
        targets = ", ".join(sorted(targets))
    print(f"sorth adapter {info['adapter_dir']}")
    print(
        f"  base model: {c.get('base_model_name_or_path')}  |  structure={c.get('structure')} "
        f"side={c.get('side')} {size} method={c.get('method')} storage={c.get('storage')} "
        f"scale={c.get('scale')}"
    )
    print(f"  targets: {targets}")
    head = f"{'layer':<44}{'side':>5}{'n':>7}{'r×b':>10}{'m':>3}{'params':>10}{'density':>9}"
    print(head + f"{'max|QᵀQ−I|':>12}")
    worst = 0.0
    for entry in info["layers"]:
        first = True
        for side in ("in", "out"):
            if side not in entry:
                continue
            q = entry[side]
            worst = max(worst, q["orth_error"])
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
        + f"; total {info['total_params']:,}; worst max|QᵀQ−I| = {worst:.1e}"
    )
    if any(
        e[s]["orth_error_of"] == "blocks" for e in info["layers"] for s in ("in", "out") if s in e
    ):
        print(f"* n > {DENSE_CHECK_MAX_N}: error of the orthogonal blocks (Q is their product)")


# --------------------------------------------------------------------------------- merge


def _adapter_dirs(adapter: Path, components: Sequence[str] | None) -> dict[str | None, Path]:
    """``{component: folder}``: one adapter folder, or one sub-folder per pipeline component."""
    if (adapter / CONFIG_NAME).is_file():
        return {None: adapter}
    subs = {p.name: p for p in sorted(adapter.iterdir()) if (p / CONFIG_NAME).is_file()}
    if components:
        subs = {k: v for k, v in subs.items() if k in components}
    if not subs:
        raise CLIError(
            f"adapter folder '{adapter}' has no {CONFIG_NAME} (nor sub-folders with one, e.g. "
            "unet/ or text_encoder/)"
        )
    return subs


@contextlib.contextmanager
def _quiet(*libraries: str) -> Iterator[None]:
    """Our stage bar replaces the libraries' per-file bars; their notices are not errors.

    Restores each library's logging verbosity and progress-bar setting on exit.
    """
    saved = []
    for name in libraries:
        log = importlib.import_module(f"{name}.utils.logging")
        saved.append((log, log.get_verbosity(), log.is_progress_bar_enabled()))
        log.disable_progress_bar()
        log.set_verbosity_error()
    try:
        yield
    finally:
        for log, verbosity, bars in saved:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


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
    config = _read_json(base / "config.json")
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
        wanted, kwargs = _head_for(adapter)
        names = [wanted, *names] if wanted else names
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise CLIError(f"base model '{base}': no transformers class among {names}")
    return "transformers", cls.from_pretrained(base, **kwargs)


# PEFT task types -> the transformers Auto class whose head the adapter was trained with
TASK_AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
_HEADS = ("out_proj.weight", "score.weight", "classifier.weight")  # (num_labels, hidden)


def _head_for(adapter: Path) -> tuple[str | None, dict[str, Any]]:
    """The class (or Auto class) the adapter was trained on, and ``num_labels`` if it has a head."""
    config = _read_json(adapter / CONFIG_NAME)
    task = str(config.get("task_type"))
    wanted = (config.get("auto_mapping") or {}).get("base_model_class")
    wanted = wanted or TASK_AUTO_CLASSES.get(task)
    n = _num_labels(adapter) if task in ("SEQ_CLS", "TOKEN_CLS") else None
    return wanted, ({"num_labels": n} if n else {})


def _num_labels(adapter_dir: Path) -> int | None:
    """Rows of the saved classification head (``modules_to_save``), if there is one."""
    from safetensors import safe_open

    path = adapter_dir / WEIGHTS_NAME
    if not path.is_file():
        return None
    with safe_open(path, "pt") as f:
        keys = [k for k in f.keys() if "sorth_" not in k]  # noqa: SIM118
        for head in _HEADS:
            found = [k for k in keys if k.endswith(head)]
            if found:
                return int(f.get_slice(found[-1]).get_shape()[0])
    return None


def _merge_into(model: Any, adapter_dir: Path, where: str) -> Any:
    """``PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()`` with one-line errors."""
    from peft import PeftModel

    import sorth.tuner  # noqa: F401 - registers the sorth PEFT type
    from sorth.errors import SOrthValueError

    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (SOrthValueError, ValueError, KeyError, RuntimeError) as err:
        line = " ".join(str(err).split())
        raise CLIError(f"adapter '{adapter_dir}' does not fit {where}: {line}") from None
    return merged


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
    base = _require_dir(base_dir, "base model folder")
    adapter = _require_dir(adapter_dir, "adapter folder")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CLIError(f"output '{out_dir}' already exists and is not empty (use --overwrite)")
    if out.resolve() in (base.resolve(), adapter.resolve()):
        raise CLIError(f"output '{out_dir}' must differ from the base and adapter folders")
    adapters = _adapter_dirs(adapter, components)
    bar = _bar("merge: load base", 3)
    try:
        libraries = ["transformers"]
        if (base / "model_index.json").is_file() or "_class_name" in _read_json_or_empty(base):
            libraries.append("diffusers")
        with warnings.catch_warnings(), _quiet(*libraries):
            warnings.simplefilter("ignore", FutureWarning)  # library deprecation notices
            obj = _merge_all(base, adapter, adapters, components, bar)
            bar.set_description_str("merge: save")
            _save_atomic(obj, base, out)
        bar.update()
    finally:
        bar.close()
    return out


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
    """``save_pretrained`` into a temporary sibling of ``out``, check it, then rename it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        obj.save_pretrained(tmp)
        _copy_extras(base, tmp)
        _check_clean(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------- plot


def _plot(args: argparse.Namespace) -> Path:
    from sorth import plotting

    size = {"nblocks": args.nblocks} if args.nblocks else {"block_size": args.block_size}
    if args.kind == "structure":
        cfg = {"n": args.n, "structure": args.structure, "n_factors": args.n_factors, **size}
        fig = plotting.plot_structure([cfg], dpi=args.dpi)
    elif args.kind == "density":
        from sorth.gs import resolve_blocks

        _, b = resolve_blocks(args.n, **size)
        fig = plotting.plot_density([(args.n, b)], max_factors=args.n_factors, dpi=args.dpi)
    else:
        from sorth.parametrizations import GSOrthogonal

        q = GSOrthogonal(args.n, structure=args.structure, n_factors=args.n_factors, **size)
        title = f"{args.structure} n={args.n}, r={q.nblocks}, b={q.block_size}"
        data = plotting.rank_data(q.matrix(), title)
        fig = plotting.plot_block_ranks([data], dpi=args.dpi)
    try:
        return plotting.save_figure(fig, args.out)
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot write '{args.out}': {err}") from None


# ---------------------------------------------------------------------------------- demo


def demo_entry() -> str:
    """The module ``sorth demo`` runs: the repository's main job if present (Note [demo])."""
    root = Path(__file__).resolve().parents[1]
    for name in DEMO_MODULES:
        top = name.split(".")[0]
        if top == "sorth" or (root / top / name.split(".")[1]).is_dir():
            return name
    return DEMO_MODULES[-1]


def _demo(rest: Sequence[str]) -> None:
    """Run ``python -m <demo_entry()> REST`` in this process (Note [demo])."""
    name = demo_entry()
    root = str(Path(__file__).resolve().parents[1])
    if not name.startswith("sorth.") and root not in sys.path:
        sys.path.insert(0, root)
    print(f"sorth demo: running `python -m {name}`", file=sys.stderr)
    argv = sys.argv
    sys.argv = [f"python -m {name}", *rest]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv


# ---------------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message}", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(message.rstrip() + "\n")
    raise SystemExit(code)


def _parser() -> _Parser:
    from sorth import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="sorth", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"sorth {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the stack of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

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

    plo = sub.add_parser(
        "plot",
        help="draw the structure of a GS matrix",
        description="Sparsity of every factor and permutation and of Q (structure), density "
        "against the number of factors vs the block butterfly (density, Theorem 2), or "
        "Proposition 1's block ranks of L P R (ranks).",
    )
    plo.add_argument("--n", type=int, required=True, help="feature size n")
    size = plo.add_mutually_exclusive_group(required=True)
    size.add_argument("--nblocks", type=int, help="r, blocks per factor")
    size.add_argument("--block-size", type=int, help="b = n / r")
    plo.add_argument("--structure", default="gs", choices=("gs", "oft", "butterfly", "monarch"))
    plo.add_argument("--n-factors", type=int, help="factors m (structure: gs/butterfly; density: "
                     "largest m shown)")  # fmt: skip
    plo.add_argument("--kind", default="structure", choices=("structure", "density", "ranks"))
    plo.add_argument("--out", required=True, help="image file (.png, .svg or .pdf)")
    plo.add_argument("--dpi", type=int, default=100)

    dem = sub.add_parser(
        "demo",
        help="run the README's main job",
        description=f"Runs `python -m {demo_entry()}` (the same job as `make demo`); every "
        "argument after `demo` is passed on (try `sorth demo -- --help`).",
        add_help=True,
    )
    dem.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the demo")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.command == "inspect":
        folder = _require_dir(args.adapter_dir, "adapter folder")
        parts = _adapter_dirs(folder, None)  # one adapter, or one per pipeline component
        infos = {comp: inspect_adapter(path) for comp, path in parts.items()}
        if args.json:
            print(json.dumps(infos.get(None, infos), indent=2, default=str))
        else:
            for info in infos.values():
                _print_inspect(info)
    elif args.command == "merge":
        out = merge_adapter(
            args.base, args.adapter, args.out, components=args.component, overwrite=args.overwrite
        )
        print(f"merged model written to {out} (safetensors; loads without sorth)")
    elif args.command == "plot":
        print(f"wrote {_plot(args)}")
    else:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        _demo(rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sorth`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from sorth.errors import SOrthValueError

    prog = f"sorth {args.command}"
    try:
        _run(args)
    except CLIError as err:
        _fail(f"{prog}: error: {err}", EXIT_USAGE)
    except SOrthValueError as err:  # invalid sizes and options, named by the core
        _fail(f"{prog}: error: {err}", EXIT_USAGE)
    except KeyboardInterrupt:
        _fail(f"{prog}: interrupted", 130)
    except BrokenPipeError:  # e.g. `sorth inspect DIR | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if args.traceback:
            raise
        line = " ".join(str(err).split()) or type(err).__name__
        _fail(f"{prog}: error: {type(err).__name__}: {line} (rerun with --traceback)", EXIT_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())

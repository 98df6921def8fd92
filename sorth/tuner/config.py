"""``SOrthConfig``: the PEFT config of GSOFT / Double GSOFT adapters.

One adapter on a layer with weight ``W`` (``d_out × d_in`` in PyTorch's ``out × in`` layout)::

    side="input"  (GSOFT):         y = s ⊙ (W · A · x) + bias
    side="output":                 y = s ⊙ (A_out · W · x) + bias
    side="both"   (Double GSOFT):  y = s ⊙ (A_out · W · A_in · x) + bias

``A = Pᵀ L P R`` (``structure="gs"``, ``P = P_(r, n)``, the paper's Section 6.1) is an orthogonal
GS matrix owned by a :class:`sorth.GSOrthogonal`; ``s`` is a learnable per-output scale
(``scale=True``). Merging gives ``W' = diag(s) · A_out · W · A_in``; see :mod:`sorth.tuner.layer`.

Notation (paper → here): ``r`` → ``nblocks``, ``b`` → ``block_size``, ``n = r · b``.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from peft.config import PeftConfig

from sorth.errors import (
    BlockSizeError,
    SOrthValueError,
    check_choice,
    check_positive_int,
    renamed_keyword,
)
from sorth.orthogonal import ORTHOGONAL_MAPS
from sorth.parametrizations import STORAGES, STRUCTURES
from sorth.tuner.errors import check_adapter_file
from sorth.tuner.peft_type import sorth_peft_type

__all__ = ["BIASES", "CONV_SIDES", "SIDES", "SOrthConfig"]

SIDES: tuple[str, ...] = ("input", "output", "both")
CONV_SIDES: tuple[str, ...] = ("filter", "channels")
BIASES: tuple[str, ...] = ("none", "all", "sorth_only")


@dataclass
class SOrthConfig(PeftConfig):
    """Configuration of a sorth (GSOFT / Double GSOFT) adapter.

    At most one of ``block_size`` / ``nblocks`` may be given; it applies to every targeted
    module and to both sides of a Double GSOFT adapter. With neither (saved as such in
    ``adapter_config.json``, so a reload rebuilds the same structure), each side of each layer
    gets its own block size: the smallest divisor ``b`` of its size ``n`` with ``b ≥ √n``, so the
    2-factor GS matrix is dense (Theorem 2; :func:`sorth.sizing.default_block_size`).
    Every value is checked here, when the config is built, and every target module's size is
    checked before the model is touched (a block size that does not divide a layer's size, or
    ``b = 1``, which leaves no trainable rotation, raises naming the module).

    Args:
        target_modules (list[str] | str | None): the modules to adapt: a list of names (each an
            exact or suffix match), a regex string, or ``"all-linear"`` (every Linear / Conv1D
            except the output head). Default ``None``: PEFT's defaults for the architecture
            (Llama: ``q_proj``, ``v_proj``).
        exclude_modules (list[str] | str | None): names or a regex removed from
            ``target_modules``. Default ``None``.
        block_size (int | None): ``b``, the size of every orthogonal block (the paper's GLUE
            runs: 8); must divide each targeted size ``n``. Default ``None``: see ``nblocks``.
        nblocks (int | None): ``r``, blocks per factor, so ``b = n / r`` (the paper's Stable
            Diffusion runs: 32). At most one of ``block_size`` / ``nblocks``; it applies to
            every module and to both sides. Default ``None``: with neither, each side of each
            layer gets the smallest divisor ``b`` of its size ``n`` with ``b ≥ √n``
            (:func:`sorth.sizing.default_block_size`: 768 → 32, 10 → 5, a prime → one dense
            block), the cheapest size whose two-factor GS matrix is dense (``b ≥ r``, Theorem
            2); the config keeps ``None``, so a reload applies the same rule. A size ``n ≥ 256``
            whose rule gives blocks over 4× the ``√n`` block (a prime such as 1031) is refused
            in one line naming the fixes; a saved adapter still loads for inference.
        structure (str): the orthogonal matrix ``A``: ``"gs"`` (``Pᵀ L P R``, GSOFT),
            ``"oft"`` (block-diagonal), ``"butterfly"`` (BOFT's block butterfly, ``n_factors``
            factors) or ``"monarch"`` (``P L Pᵀ R``). Default ``"gs"``.
        n_factors (int | None): factors of ``"gs"`` and ``"butterfly"``. Default ``None``: 2
            for ``"gs"``; for ``"butterfly"`` ``1 + ⌈log2 r⌉``, the fewest that give a dense
            matrix (capped where ``r`` is not a power of 2).
        side (str): which side of ``W`` is rotated: ``"input"`` (GSOFT,
            ``y = s ⊙ (W·A·x)``), ``"output"`` (``s ⊙ (A·W·x)``) or ``"both"`` (Double GSOFT,
            ``s ⊙ (A_out·W·A_in·x)``). Default ``"input"``.
        scale (bool): a learnable per-output scale ``s`` (initialised to ones), as in the
            paper. Default ``True``.
        orthogonal_map (str): the orthogonal map of each block: ``"cayley"`` (exact, a
            batched solve), ``"expm"`` (matrix exponential) or ``"cayley_neumann"`` (the
            truncated series, per block only while its certified error bound is ≤ 1e-2, the
            exact solve beyond).
            Default ``"cayley"``. (``method=``, its old name, still works with a
            ``DeprecationWarning``.)
        neumann_terms (int): terms ``t`` of the truncated series of ``"cayley_neumann"``.
            Default ``5``.
        storage (str): ``"skew"`` stores the ``b(b−1)/2`` free entries of each block's
            skew-symmetric generator; ``"full"`` stores ``b×b`` as the paper's code counts (the
            symmetric half gets no gradient). Default ``"skew"``.
        module_dropout (float): in training only, each orthogonal block is replaced by the
            identity with this probability; in ``[0, 1)``. Default ``0.0`` (off).
        conv_side (str): what a Conv2d's input-side rotation acts on: ``"filter"`` (the
            flattened ``C/groups·kh·kw`` filter, as OFT / BOFT) or ``"channels"`` (the input
            channels; ``groups=1`` only). Default ``"filter"``.
        bias (str): which biases train: ``"none"``, ``"all"``, or ``"sorth_only"`` (those of
            adapted layers). Default ``"none"``.
        init_weights (bool): ``True`` starts from the identity (``A = I``, ``s = 1``: the
            adapted model equals the base); ``False`` gives a random non-identity adapter, for
            tests. Default ``True``.
        init_std (float): std of the random generators when ``init_weights=False``; positive.
            Default ``0.1``.
        fan_in_fan_out (bool): the weight is stored ``(in, out)``; true only for transformers'
            ``Conv1D``, whose layout is read from the layer type (``True`` on any other layer
            is an error). Default ``False``.
        exact_unmerge (bool | None): ``True`` keeps the weight each merge replaces, so that
            unmerge restores it bit for bit (while merged, the adapted weights are held twice);
            ``False`` unmerges by the exact inverse of the merge (``A⁻¹``, ``1/s``), within an
            ulp for Linear / Conv1D / Embedding, no extra memory. Default ``None``: ``False``,
            except on layers whose forward builds the adapted weight in float32 (Conv2d), where
            an inverse cannot give back the forward's numbers and the weight is kept.
        layers_to_transform (list[int] | int | None): adapt only these layer indices (as in
            PEFT). Default ``None``: all.
        layers_pattern (list[str] | str | None): name of the ``ModuleList`` holding the layers
            (``"layers"``, ``"h"``), needed with ``layers_to_transform``. Default ``None``.
        modules_to_save (list[str] | None): extra modules (e.g. a classifier head) trained
            fully and saved with the adapter. Default ``None``.

    ``task_type``, ``inference_mode`` and the other fields of :class:`peft.PeftConfig` work as
    for every PEFT method.

    Example:
        >>> cfg = SOrthConfig(target_modules=["q_proj", "v_proj"], block_size=8)
        >>> model = get_peft_model(model, cfg)  # doctest: +SKIP
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (list: exact or suffix match) or a regex (str) to adapt; "
            "'all-linear' "
            "targets every Linear / Conv1D except the output head; None uses PEFT's defaults."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to exclude from target_modules."}
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "b: size of each orthogonal block (or nblocks; neither: per-layer default)."
        },
    )
    nblocks: int | None = field(
        default=None,
        metadata={
            "help": "r: blocks per factor, b = n / r (or block_size; neither: per-layer default)."
        },
    )
    structure: Literal["gs", "oft", "butterfly", "monarch"] = field(
        default="gs",
        metadata={
            "help": "'gs': A = Pᵀ L P R (GSOFT, dense with 2 factors when b ≥ r); 'oft': "
            "block-diagonal; "
            "'butterfly': BOFT's block butterfly with n_factors; 'monarch': P L Pᵀ R."
        },
    )
    n_factors: int | None = field(
        default=None,
        metadata={"help": "Factors for 'gs' (default 2) and 'butterfly' (default 1 + ⌈log2 r⌉)."},
    )
    side: Literal["input", "output", "both"] = field(
        default="input", metadata={"help": "'input' (GSOFT), 'output', or 'both' (Double GSOFT)."}
    )
    scale: bool = field(
        default=True,
        metadata={"help": "Learnable per-output-feature scale s (initialised to ones)."},
    )
    orthogonal_map: Literal["cayley", "expm", "cayley_neumann"] = field(
        default="cayley",
        metadata={
            "help": "Orthogonal map of each block: exact Cayley solve, matrix exponential, or "
            "Neumann (as torch's parametrizations.orthogonal(orthogonal_map=...))."
        },
    )
    neumann_terms: int = field(
        default=5, metadata={"help": "Terms of the truncated Neumann series (cayley_neumann only)."}
    )
    storage: Literal["skew", "full"] = field(
        default="skew",
        metadata={
            "help": "'skew': b(b−1)/2 free entries per block; 'full': b×b per block as the "
            "paper's code "
            "counts (the symmetric half gets no gradient)."
        },
    )
    module_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Training only: each orthogonal block is replaced by the identity with "
            "this prob."
        },
    )
    conv_side: Literal["filter", "channels"] = field(
        default="filter",
        metadata={
            "help": "Conv2d input side: 'filter' rotates the flattened C/groups·kh·kw filter "
            "(like OFT/BOFT); "
            "'channels' rotates the input channels on the activations (groups=1 only)."
        },
    )
    bias: Literal["none", "all", "sorth_only"] = field(
        default="none",
        metadata={
            "help": "Biases to train: none, all biases, or those of adapted layers ('sorth_only')."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: identity adapter (A = I, s = 1). False: random non-identity (for tests)."
        },
    )
    init_std: float = field(
        default=0.1, metadata={"help": "Std of the random generators when init_weights=False."}
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={
            "help": "Weight stored as (in, out): true only for transformers Conv1D. The "
            "layout is read from the layer type; True on any other layer is an error."
        },
    )
    exact_unmerge: bool | None = field(
        default=None,
        metadata={
            "help": "True: keep each weight a merge replaces, so that unmerge restores it bit "
            "for bit (while merged, the adapted weights are held twice). False: unmerge "
            "inverts the merge (A⁻¹, 1/s) within an ulp, no extra memory. None: False, except "
            "on Conv2d, whose forward builds the adapted weight (Note [exact unmerge])."
        },
    )
    layers_to_transform: list[int] | int | None = field(
        default=None,
        metadata={"help": "Only adapt these layer indices (needs a layers_pattern match)."},
    )
    layers_pattern: list[str] | str | None = field(
        default=None,
        metadata={"help": "Name of the ModuleList holding the layers, e.g. 'layers' or 'h'."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Extra modules (e.g. a classifier head) trained fully and saved with the "
            "adapter."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = sorth_peft_type()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        self._validate()

    def _validate(self) -> None:
        if self.block_size is not None and self.nblocks is not None:
            raise BlockSizeError(
                f"give at most one of block_size ({self.block_size}) or nblocks ({self.nblocks}); "
                "e.g. SOrthConfig(block_size=8) as in the paper's GLUE runs or nblocks=32 for SD, "
                "or neither for the per-layer default (smallest divisor b >= sqrt(n))."
            )
        if self.block_size is not None:
            check_positive_int("block_size", self.block_size)
        if self.nblocks is not None:
            check_positive_int("nblocks", self.nblocks)
        if self.n_factors is not None:
            check_positive_int("n_factors", self.n_factors)
        check_choice("structure", self.structure, STRUCTURES)
        check_choice("side", self.side, SIDES)
        check_choice("orthogonal_map", self.orthogonal_map, ORTHOGONAL_MAPS)
        check_choice("storage", self.storage, STORAGES)
        check_choice("conv_side", self.conv_side, CONV_SIDES)
        check_choice("bias", self.bias, BIASES)
        check_positive_int("neumann_terms", self.neumann_terms)
        if not 0.0 <= float(self.module_dropout) < 1.0:
            raise SOrthValueError(
                f"module_dropout={self.module_dropout} must be in [0, 1); 0 disables it."
            )
        if float(self.init_std) <= 0:
            raise SOrthValueError(f"init_std={self.init_std} must be positive.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise SOrthValueError(
                f"layers_pattern={self.layers_pattern!r} needs layers_to_transform as well."
            )

    @property
    def method(self) -> str:
        """Deprecated name of :attr:`orthogonal_map` (a :class:`DeprecationWarning`)."""
        warnings.warn(
            "SOrthConfig.method is deprecated; the field is orthogonal_map.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.orthogonal_map

    @method.setter
    def method(self, value: str) -> None:
        warnings.warn(
            "SOrthConfig.method is deprecated; the field is orthogonal_map.",
            DeprecationWarning,
            stacklevel=2,
        )
        self.orthogonal_map = value

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """PEFT's hook on the fields read from ``adapter_config.json``, before the config is built.

        Note [old adapter folders]: sorth versions before the ``orthogonal_map`` name saved the
        orthogonal map as ``"method"``; such a folder loads unchanged (``"method"`` is read as
        ``orthogonal_map``, silently: the file is not the user's code). Saving it again writes
        ``"orthogonal_map"``.
        """
        kwargs = super().check_kwargs(**kwargs)
        if "method" in kwargs and "orthogonal_map" not in kwargs:
            kwargs["orthogonal_map"] = kwargs.pop("method")
        return kwargs

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs
    ) -> SOrthConfig:
        """PEFT's loader, plus a check that a local ``adapter_model.safetensors`` is readable.

        ``PeftModel.from_pretrained`` / ``load_adapter`` read the config *before* they inject the
        adapter, so a truncated or corrupted weights file is reported here, with the model still
        unchanged, instead of failing half-way through (see :func:`check_adapter_file`).
        """
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder, **kwargs)
        path = str(pretrained_model_name_or_path)
        check_adapter_file(os.path.join(path, subfolder) if subfolder else path)
        return config


def _accept_method_keyword(init: Any) -> Any:
    """``SOrthConfig(method=...)``: the deprecated name of ``orthogonal_map`` still builds the
    config, with a :class:`DeprecationWarning` (also when PEFT's base ``PeftConfig.from_pretrained``
    reads an old folder, which bypasses :meth:`SOrthConfig.check_kwargs`)."""

    @functools.wraps(init)
    def init_with_method(self: SOrthConfig, *args: Any, method: str | None = None, **kwargs: Any):
        if method is not None:
            kwargs["orthogonal_map"] = renamed_keyword(
                "SOrthConfig", "method", "orthogonal_map", method,
                kwargs.get("orthogonal_map", "cayley"), "cayley",
            )  # fmt: skip
        init(self, *args, **kwargs)

    # the signature PEFT inspects to drop unknown keys (peft.config) must keep `method`
    signature = inspect.signature(init)
    extra = inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, default=None)
    init_with_method.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), extra]
    )
    return init_with_method


SOrthConfig.__init__ = _accept_method_keyword(SOrthConfig.__init__)

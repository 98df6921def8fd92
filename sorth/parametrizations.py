"""``GSOrthogonal``: a module owning the parameters of an orthogonal GS matrix.

``Q = P_{m+1} · B_m ··· B_1 · P_1`` with every block ``B_i[j] = orth(K_i[j])`` orthogonal
(:mod:`sorth.orthogonal`), so ``Q`` is orthogonal (Theorem 1 direction). ``K = 0`` at
initialisation, so ``Q = I``.

Note [storage]: by default (``storage="skew"``) each block stores only the ``b(b−1)/2`` free
entries of its skew-symmetric generator ``K`` — the honest parameter count, half the checkpoint.
``storage="full"`` stores an unconstrained ``b × b`` ``A`` per block and uses ``K = ½(A − Aᵀ)``,
as the paper's code does and counts (its symmetric half never receives a gradient).

Structures (``n = r · b``; ``r`` = ``nblocks``, ``b`` = ``block_size``):

=============  ===============================================  ===========================
structure      Q                                                factors × blocks
=============  ===============================================  ===========================
``"gs"``       ``Pᵀ L P R``, ``P = P_(r, n)`` (GSOFT)            ``n_factors`` (2) × r × b²
``"oft"``      ``diag(Q_1..Q_r)``                               1 × r × b²
``"butterfly"`` BOFT block butterfly                             m × r × b², m = 1 + log2 r
``"monarch"``  ``P_(r,n) L P_(b,n) R``, ``L``: b blocks of r      r × b² + b × r²
=============  ===============================================  ===========================
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from torch import nn

from sorth.errors import BlockSizeError, check_choice, check_positive_int, renamed_keyword
from sorth.gs import (
    GSMatrix,
    ShufflePlan,
    min_butterfly_factors_for_density,
    resolve_blocks,
    shuffle_plan,
)
from sorth.orthogonal import ORTHOGONAL_MAPS, OrthogonalMap, orthogonal_blocks, skew, unpack_skew
from sorth.permutations import compose_permutations, invert_permutation

__all__ = ["STORAGES", "STRUCTURES", "GSOrthogonal"]

Structure = Literal["gs", "oft", "butterfly", "monarch"]
STRUCTURES: tuple[str, ...] = ("gs", "oft", "butterfly", "monarch")
STORAGES: tuple[str, ...] = ("skew", "full")


def _factor_shapes(structure: str, n: int, r: int, b: int, m: int) -> list[tuple[int, int]]:
    """``(nblocks, block_size)`` of every factor, ``B_1`` first."""
    if structure == "monarch":
        return [(r, b), (b, r)]
    return [(r, b)] * m


def _template(structure: str, shapes: list[tuple[int, int]]) -> GSMatrix:
    """A GS matrix with zero blocks of the right structure (used for its permutations), on the
    CPU whatever the default device: under ``with torch.device("meta")`` (deferred init) the
    permutations are still computed (Note [meta init])."""
    zeros = [torch.zeros(k, bb, bb, device="cpu") for k, bb in shapes]
    if structure == "gs":
        if len(zeros) == 2:
            return GSMatrix.gsoft(zeros[1], zeros[0])
        if len(zeros) == 1:
            return GSMatrix.block_diagonal(zeros[0])
        # P_L undoes the m-1 inner shuffles, so that Q = I when every block is I
        inner = GSMatrix.shuffled(zeros).perms[1:-1]
        total = functools.reduce(compose_permutations, inner)
        return GSMatrix.shuffled(zeros, perm_left=invert_permutation(total))
    if structure == "oft":
        return GSMatrix.block_diagonal(zeros[0])
    if structure == "butterfly":
        return GSMatrix.butterfly(zeros)
    return GSMatrix.monarch(zeros[1], zeros[0])


# Note [factor cache]: the Cayley solve (or exponential) of every block is recomputed on each
# call while training, as autograd needs it. With gradients off, e.g. in ``model.generate``
# where the adapter runs once per token, the factors are a function of the parameter values
# only, so they are kept together with a snapshot of those values and reused only while every
# parameter is bit-identical to its snapshot (``torch.equal``; a NaN never matches). This
# catches every kind of update — optimizer steps, ``load_state_dict``, ``.to()``, and in-place
# writes through ``p.data`` that bypass autograd's version counter — for the price of one
# comparison of the (small) parameters, against a batched LU solve of every block. The cache is
# a plain attribute: not in the state dict, not a buffer. It is also keyed on whether the factors
# came from a warm start (training mode with Cayley, Note [warm Cayley]): factors computed by a
# gradient-free call in training mode are never reused in eval mode, so eval-mode factors are
# always a fresh solve of the current parameters and do not depend on the training history.
class _FactorCache:
    def __init__(self, module: GSOrthogonal, factors: list[torch.Tensor]):
        self.meta = _cache_meta(module)
        self.params = [p.detach().clone() for p in module.params]
        self.factors = tuple(factors)

    def matches(self, module: GSOrthogonal) -> bool:
        return self.meta == _cache_meta(module) and all(
            torch.equal(p, q) for p, q in zip(module.params, self.params, strict=True)
        )


def _cache_meta(module: GSOrthogonal) -> tuple:
    shapes = tuple((p.shape, p.dtype, p.device) for p in module.params)
    warm = module.training and module.orthogonal_map == "cayley"  # see _compute_factors
    return (*shapes, module.orthogonal_map, module.neumann_terms, module.storage, warm)


class GSOrthogonal(nn.Module):
    """Orthogonal ``n × n`` GS matrix applied to the last dim: ``(..., n) -> (..., n)``.

    Args:
        n: feature size.
        nblocks: ``r``, blocks per factor (exactly one of ``nblocks`` / ``block_size``).
        block_size: ``b = n / r``.
        orthogonal_map: the map of each block (:data:`sorth.orthogonal.ORTHOGONAL_MAPS`):
            ``"cayley"`` (exact solve), ``"expm"`` or ``"cayley_neumann"``.
        structure: ``"gs"`` (default), ``"oft"``, ``"butterfly"`` or ``"monarch"``.
        n_factors: number of factors for ``"gs"`` (default 2) and ``"butterfly"`` (default
            ``1 + ⌈log2 r⌉``, the fewest that give a dense matrix, capped at ``1 + log2`` of the
            largest power of 2 dividing ``r``, since factor ``i`` needs ``2**i | r``).
        neumann_terms: series length for ``"cayley_neumann"``.
        storage: ``"skew"`` (free entries only) or ``"full"`` (see Note [storage]).
        block_dropout: during training, each block is replaced by the identity with this
            probability (multiplicative dropout; ``Q`` stays orthogonal).
        device, dtype: factory kwargs for the parameters.
        method: deprecated name of ``orthogonal_map`` (a :class:`DeprecationWarning`).

    Example:
        >>> q = GSOrthogonal(768, block_size=8)
        >>> y = q(torch.randn(4, 768))  # identity at init
    """

    def __init__(
        self,
        n: int,
        *,
        nblocks: int | None = None,
        block_size: int | None = None,
        orthogonal_map: OrthogonalMap = "cayley",
        structure: Structure = "gs",
        n_factors: int | None = None,
        neumann_terms: int = 5,
        storage: Literal["skew", "full"] = "skew",
        block_dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        method: OrthogonalMap | None = None,
    ):
        super().__init__()
        orthogonal_map = renamed_keyword(
            "GSOrthogonal", "method", "orthogonal_map", method, orthogonal_map, "cayley"
        )
        check_choice("orthogonal_map", orthogonal_map, ORTHOGONAL_MAPS)
        check_choice("structure", structure, STRUCTURES)
        check_choice("storage", storage, STORAGES)
        check_positive_int("neumann_terms", neumann_terms)
        if not 0.0 <= float(block_dropout) < 1.0:
            raise BlockSizeError(f"block_dropout={block_dropout} must be in [0, 1).")
        r, b = resolve_blocks(n, nblocks=nblocks, block_size=block_size)
        m = self._resolve_factors(structure, n, r, b, n_factors)
        self.n, self.nblocks, self.block_size, self.n_factors = n, r, b, m
        self.orthogonal_map, self.structure, self.storage = orthogonal_map, structure, storage
        self.neumann_terms, self.block_dropout = neumann_terms, float(block_dropout)
        self._shapes = _factor_shapes(structure, n, r, b, m)
        self._uniform = len(set(self._shapes)) == 1
        factory = {"device": device, "dtype": dtype}
        self.params = nn.ParameterList(
            nn.Parameter(torch.zeros(self._param_shape(k, bb), **factory)) for k, bb in self._shapes
        )
        self._perm_names: list[str | None] = []
        self._plan_kinds: list[tuple[int, int] | str | None] = []
        buffers = self._permutation_buffers()
        buffer_device = device if device is not None else torch.empty(0).device
        for name, P in buffers.items():
            self.register_buffer(name, P.to(buffer_device), persistent=False)

    def _permutation_buffers(self) -> dict[str, torch.Tensor]:
        """The permutation buffers (CPU), filling ``_perm_names`` / ``_plan_kinds`` if empty.

        Note [shuffle plan]: how each permutation is applied (sorth.gs.shuffle_plan) is decided
        once, here; general permutations keep their inverse as a buffer, so the forward does no
        data-dependent work (no device sync, torch.compile fullgraph friendly).
        """
        template = _template(self.structure, self._shapes)
        first = not self._perm_names
        buffers = {}
        for i, P in enumerate(template.perms):
            name = None if P is None else f"perm_{i}"
            if P is not None:
                buffers[name] = P
            if first:
                self._perm_names.append(name)
        for i, (fwd, inv) in enumerate(shuffle_plan(template.perms)):
            if isinstance(fwd, torch.Tensor):
                buffers[f"perm_{i}_inv"] = inv
            if first:
                kind = None if fwd is None else (fwd, inv)
                self._plan_kinds.append("index" if isinstance(fwd, torch.Tensor) else kind)
        return buffers

    @torch.no_grad()
    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the permutation buffers, on ``device`` (default: the parameters' device).

        Note [meta init]: a model built under ``with torch.device("meta")`` and materialised
        with ``module.to_empty(device=...)`` (deferred initialisation, e.g. before
        ``fully_shard``) has uninitialised buffers; the permutations are not in the state dict
        (they follow from the sizes), so loading a checkpoint does not restore them. Call this
        on every :class:`GSOrthogonal` after ``to_empty``
        (:func:`sorth.integrations.distributed.reset_sorth_buffers` does it for a model).
        """
        if device is None:
            device = self.params[0].device
        for name, P in self._permutation_buffers().items():
            setattr(self, name, P.to(device))

    @staticmethod
    def _resolve_factors(structure: str, n: int, r: int, b: int, n_factors: int | None) -> int:
        if structure in ("oft", "monarch"):
            fixed = 1 if structure == "oft" else 2
            if n_factors not in (None, fixed):
                raise BlockSizeError(
                    f"structure={structure!r} has exactly {fixed} factor(s); got "
                    f"n_factors={n_factors}."
                )
            return fixed
        if n_factors is None:
            if structure == "gs":
                return 2
            # the fewest factors that make Q dense, capped by what r allows (2**(m-1) | r)
            max_allowed = 1 + (r & -r).bit_length() - 1
            return min(min_butterfly_factors_for_density(n, b), max_allowed)
        return check_positive_int("n_factors", n_factors)

    def _param_shape(self, k: int, b: int) -> tuple[int, ...]:
        return (k, b * (b - 1) // 2) if self.storage == "skew" else (k, b, b)

    # ------------------------------------------------------------------------ math
    def _skew(self, p: torch.Tensor, b: int) -> torch.Tensor:
        return unpack_skew(p, b) if self.storage == "skew" else skew(p)

    def orthogonal_factors(self) -> list[torch.Tensor]:
        """The orthogonal block tensors ``[(k_1, b_1, b_1), …]`` in the parameters' dtype.

        With gradients off (evaluation, generation, merging) the result is cached until a
        parameter changes (Note [factor cache]).
        """
        if self.training and self.block_dropout > 0:
            return [self._drop_blocks(Q) for Q in self._compute_factors()]
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._compute_factors()
        cached = self.__dict__.get("_factor_cache")
        if cached is None or not cached.matches(self):
            cached = _FactorCache(self, self._compute_factors())
            self.__dict__["_factor_cache"] = cached
        return list(cached.factors)

    def clear_cache(self) -> None:
        """Drop the factors kept for gradient-free calls (Note [factor cache])."""
        self.__dict__.pop("_factor_cache", None)

    def _compute_factors(self) -> list[torch.Tensor]:
        """Orthogonal factors from the parameters. In training mode with Cayley, the previous
        result is the starting guess of the next call (Note [warm Cayley] in
        :mod:`sorth.orthogonal`); in eval mode every call solves, so evaluation does not depend
        on the training history, not even in the last bit."""
        skews = [self._skew(p, b) for p, (_, b) in zip(self.params, self._shapes, strict=True)]
        groups = [torch.stack(skews)] if self._uniform else skews  # uniform: one batched solve
        warm_up = self.training and self.orthogonal_map == "cayley"
        warm = (self.__dict__.get("_warm_start") if warm_up else None) or [None] * len(groups)
        Qs = [
            orthogonal_blocks(K, self.orthogonal_map, neumann_terms=self.neumann_terms, guess=g)
            for K, g in zip(groups, warm, strict=True)
        ]
        if warm_up:
            self.__dict__["_warm_start"] = [Q.detach() for Q in Qs]
        return list(Qs[0].unbind(0)) if self._uniform else Qs

    def _drop_blocks(self, Q: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(Q.shape[0], 1, 1, device=Q.device) >= self.block_dropout
        eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)
        return torch.where(keep, Q, eye)

    @property
    def perms(self) -> list[torch.Tensor | None]:
        return [None if name is None else getattr(self, name) for name in self._perm_names]

    def matrix(self, dtype: torch.dtype | None = None) -> GSMatrix:
        """The current orthogonal GS matrix (factors cast to ``dtype`` if given)."""
        factors = self.orthogonal_factors()
        if dtype is not None:
            factors = [Q.to(dtype) for Q in factors]
        return GSMatrix._trusted(factors, self.perms, self._shuffle_plan())

    def _shuffle_plan(self) -> ShufflePlan:
        """The :func:`~sorth.gs.shuffle_plan` of the current buffers (see Note [shuffle plan])."""
        plan = []
        for i, kind in enumerate(self._plan_kinds):
            if kind == "index":
                plan.append((getattr(self, f"perm_{i}"), getattr(self, f"perm_{i}_inv")))
            else:
                plan.append((None, None) if kind is None else kind)
        return tuple(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Q @ x`` on the last dim, in ``x``'s dtype: ``(..., n) -> (..., n)``."""
        if x.shape[-1] != self.n:
            raise BlockSizeError(f"input last dim {x.shape[-1]} != n={self.n} of {self!r}.")
        return self.matrix(dtype=x.dtype).apply(x)

    def dense(self) -> torch.Tensor:
        """The dense ``(n, n)`` orthogonal matrix ``Q``."""
        return self.matrix().to_dense()

    # ------------------------------------------------------------------ parameters
    @torch.no_grad()
    def reset_parameters(
        self,
        init: Literal["identity", "random"] = "identity",
        *,
        std: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        """``"identity"``: zeros (``Q = I``); ``"random"``: normal(0, std) generators."""
        check_choice("init", init, ("identity", "random"))
        for p in self.params:
            if init == "identity":
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)

    @property
    def method(self) -> str:
        """Deprecated name of :attr:`orthogonal_map` (a :class:`DeprecationWarning`)."""
        warnings.warn(
            "GSOrthogonal.method is deprecated; the attribute is orthogonal_map.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.orthogonal_map

    @method.setter
    def method(self, value: str) -> None:
        warnings.warn(
            "GSOrthogonal.method is deprecated; the attribute is orthogonal_map.",
            DeprecationWarning,
            stacklevel=2,
        )
        self.orthogonal_map = value

    @property
    def num_parameters(self) -> int:
        """Trainable parameters actually stored (see Note [storage])."""
        return sum(p.numel() for p in self.params)

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, nblocks={self.nblocks}, block_size={self.block_size}, "
            f"structure={self.structure!r}, n_factors={self.n_factors}, "
            f"orthogonal_map={self.orthogonal_map!r}, "
            f"storage={self.storage!r}"
        )

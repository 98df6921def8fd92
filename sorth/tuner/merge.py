"""The weight side of a sorth layer: the adapted weight, merge and unmerge (:class:`WeightMerge`).

For a base weight ``W`` (``d_out × d_in``, or a layer's own layout: ``_w_in_dim`` /
``_w_out_dim`` name the dims holding the in- and out-features) and adapters ``1 … k`` in the
order they are applied (``W_0 = W``)::

    W_j = diag(s_j) · A_out_j · W_{j-1} · A_in_j          (A = I for a side that is off)
    W_{j-1} = A_out_j⁻¹ · diag(1 / s_j) · W_j · A_in_j⁻¹   (unmerge, last merged first)

computed in float32 (float64 for a float64 base), with ``A⁻¹ = Aᵀ`` for exactly orthogonal
factors (Cayley, expm; never ``linalg.inv``) and block-wise solves for the truncated Neumann
series. Merging several adapters applies the recursion in order; unmerging restores the weight
the first merge replaced when it is still valid (Note [exact unmerge] on :meth:`WeightMerge.merge`)
and inverts the recursion otherwise. Conv2d's forward builds ``W_k`` with the same arithmetic
(:meth:`WeightMerge._apply_to_weight`), so its merged layer gives the same numbers.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge

from sorth.gs import GSMatrix
from sorth.permutations import invert_permutation
from sorth.tuner.sharding import check_unsharded

__all__ = ["NAN_MESSAGE", "WeightMerge"]

NAN_MESSAGE = "NaNs detected in the merged weights. The adapter {} seems to be broken"


def _inverse(A: GSMatrix, orthogonal: bool) -> GSMatrix:
    """``A⁻¹``: ``Aᵀ`` for exactly orthogonal factors (Cayley, expm); block-wise solves for the
    truncated Neumann series, whose blocks are only approximately orthogonal. Each factor is
    solved against the identity of its own block size (a Monarch matrix has ``r × r`` and
    ``b × b`` blocks)."""
    if orthogonal:
        return A.T
    factors = []
    for B in reversed(A.factors):
        eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
        factors.append(torch.linalg.solve(B, eye.expand_as(B)))
    perms = [None if P is None else invert_permutation(P) for P in reversed(A.perms)]
    return GSMatrix(factors, perms)


class WeightMerge:
    """Merge arithmetic of :class:`sorth.tuner.layer.SOrthLayer`, which it is a base of.

    Uses the layer's adapter tables (``sorth_in``, ``sorth_out``, ``sorth_s``,
    ``sorth_on_weight``), its weight layout (``_w_out_dim``, ``_in_rows``, ``_from_in_rows``),
    ``_matrix`` and PEFT's ``get_base_weight`` / ``set_base_weight`` / ``merged_adapters``;
    keeps ``_merge_snapshot`` (set to ``None`` by the layer's ``__init__``).
    """

    def _compute_dtype(self, W: torch.Tensor) -> torch.dtype:
        return torch.float64 if W.dtype == torch.float64 else torch.float32

    def _apply_to_weight(
        self, W: torch.Tensor, name: str, inverse: bool, dropout: bool = False
    ) -> torch.Tensor:
        """``diag(s)·A_out·W·A_in`` (or its inverse) in float32/64, weight in the base layout.

        ``dropout=True`` (the forward of a weight-side adapter) drops blocks in training mode as
        the activation path does; merging never does.
        """
        dtype = self._compute_dtype(W)
        W = W.to(dtype)
        on_weight = self.sorth_on_weight[name]
        A_in = self._matrix(self.sorth_in, name, dtype, dropout=dropout)
        A_out = self._matrix(self.sorth_out, name, dtype, dropout=dropout)
        s = self.sorth_s[name].to(dtype) if name in self.sorth_s else None
        shape = [1] * W.dim()
        shape[self._w_out_dim] = -1
        if inverse and s is not None:
            W = W / s.view(shape)
        if A_in is not None:
            rows = self._in_rows(W, on_weight)
            rows = rows @ (self._inv(A_in, name) if inverse else A_in)  # W·A_in, or W·A_in⁻¹
            W = self._from_in_rows(rows, W, on_weight)
        if A_out is not None:
            rows = W.movedim(self._w_out_dim, -1)
            rows = (self._inv(A_out, name) if inverse else A_out).apply(rows)  # A_out·W (cols)
            W = rows.movedim(-1, self._w_out_dim)
        if not inverse and s is not None:
            W = W * s.view(shape)
        return W

    def _inv(self, A: GSMatrix, name: str) -> GSMatrix:
        table = self.sorth_in if name in self.sorth_in else self.sorth_out
        return _inverse(A, orthogonal=table[name].orthogonal_map != "cayley_neumann")

    def get_merged_weight(self, adapter_name: str) -> torch.Tensor:
        """``diag(s)·A_out·W·A_in`` for one adapter, in float32 (float64 for float64 bases)."""
        check_unsharded(self.get_base_layer().weight, "compute the merged weight")
        return self._apply_to_weight(self.get_base_weight(), adapter_name, inverse=False)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Additive equivalent of the adapter: merged weight minus the current base weight."""
        W = self.get_base_weight()
        return self.get_merged_weight(adapter_name) - W.to(self._compute_dtype(W))

    @staticmethod
    def _like(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """``new`` in ``old``'s dtype and memory layout (strides): a merged weight is as
        contiguous as the base weight was, so e.g. safetensors can save it."""
        return torch.empty_like(old).copy_(new)

    def _merged(self, W0: torch.Tensor, names: list[str]) -> torch.Tensor:
        """One merge call's result in ``W0``'s dtype and layout (refuses non-finite)."""
        W = W0
        for name in names:
            W = self._apply_to_weight(W, name, inverse=False)
            if not torch.isfinite(W).all():
                raise ValueError(NAN_MESSAGE.format(name))
        return self._like(W, W0)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the base weight, in the order they are applied.

        All-or-nothing: every adapter's weight is computed first and the base weight and
        ``merged_adapters`` change only if all succeed. A non-finite result is refused with
        ``safe_merge=True`` (PEFT's message); sorth also refuses it without ``safe_merge``,
        since the base weight could not be restored from it.

        Note [exact unmerge]: the base weight tensor replaced by the first merge is kept (not
        copied: the layer just does not free it), so that :meth:`unmerge` puts the original
        bits back when the current weight is still bit for bit what the merges wrote (checked
        by redoing them); otherwise it inverts the merges arithmetically. In float32 the inverse
        is exact only to a few ulps, and repeated merge/unmerge cycles (e.g. evaluation during
        training) would otherwise drift the frozen weights.
        """
        names = self._present(check_adapters_to_merge(self, adapter_names))
        if not names:
            return
        check_unsharded(self.get_base_layer().weight, "merge the adapter")  # Note [sharded merge]
        W0 = self.get_base_weight()
        merged = self._merged(W0, names)
        self.set_base_weight(merged)
        if not self.merged_adapters and getattr(self, "quantization_backend", None) is None:
            self._merge_snapshot = (W0, [])  # (a quantized weight is rebuilt: no snapshot)
        if self._merge_snapshot is not None:
            self._merge_snapshot[1].append(list(names))
        self.merged_adapters.extend(names)

    def _original_weight(self) -> torch.Tensor | None:
        """The weight before the merges if the current one is exactly what they wrote."""
        if self._merge_snapshot is None:
            return None
        original, calls = self._merge_snapshot
        if sum(len(c) for c in calls) != len(self.merged_adapters):
            return None
        if original.device != self.get_base_weight().device:  # moved while merged
            return None
        if any(n not in self.sorth_on_weight for c in calls for n in c):
            return None
        W = original
        try:
            for names in calls:
                W = self._merged(W, names)
        except ValueError:
            return None
        current = self.get_base_weight()
        same = W.shape == current.shape and W.dtype == current.dtype
        return original if same and torch.equal(W, current) else None

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: the original weight when still valid (Note [exact unmerge]),
        else the inverse, last merged first, with ``Aᵀ`` (block solves for Neumann) and ``1/s``.
        All-or-nothing, like :meth:`merge`: on an error the weight and ``merged_adapters`` are
        left as they were."""
        if not self.merged_adapters:
            self._merge_snapshot = None
            return
        check_unsharded(self.get_base_layer().weight, "unmerge the adapter")
        W = self._original_weight()
        if W is None:
            W0 = self.get_base_weight()
            W = W0
            for name in reversed(self.merged_adapters):
                if name in self.sorth_on_weight:
                    W = self._apply_to_weight(W, name, inverse=True)
            W = self._like(W, W0)
        self.set_base_weight(W)
        self.merged_adapters.clear()
        self._merge_snapshot = None

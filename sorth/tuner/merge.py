"""The weight side of a sorth layer: the adapted weight, merge and unmerge (:class:`WeightMerge`).

For a base weight ``W`` (``d_out × d_in``, or a layer's own layout: ``_w_in_dim`` /
``_w_out_dim`` name the dims holding the in- and out-features) and adapters ``1 … k`` in the
order they are applied (``W_0 = W``)::

    W_j = diag(s_j) · A_out_j · W_{j-1} · A_in_j          (A = I for a side that is off)
    W_{j-1} = A_out_j⁻¹ · diag(1 / s_j) · W_j · A_in_j⁻¹   (unmerge, last merged first)

with the adapters' float32 matrices (float64 for a float64 base), the products in float64, and
``A⁻¹`` the exact inverse of those matrices by block solves (not ``Aᵀ``: a float32 block is
orthogonal only to ~``b·eps``). Merging several adapters applies the recursion in order;
unmerging inverts it, last merged first, or (``exact_unmerge=True``, and by default on Conv2d)
restores the weight the first merge replaced (Note [exact unmerge] on
:meth:`WeightMerge.merge`). Conv2d's forward builds ``W_k`` with the same arithmetic in
float32 (:meth:`WeightMerge._apply_to_weight`), and its merge is that float32 arithmetic, so
its merged layer gives the same numbers.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge

from sorth.gs import GSMatrix
from sorth.permutations import invert_permutation
from sorth.tuner.sharding import check_unsharded

__all__ = ["NAN_MESSAGE", "WeightMerge"]

NAN_MESSAGE = "NaNs detected in the merged weights. The adapter {} seems to be broken"


def _inverse(A: GSMatrix, dtype: torch.dtype) -> GSMatrix:
    """The exact inverse of ``A`` as computed (its factors cast to ``dtype``), by block-wise
    solves: ``A⁻¹ = R⁻¹ Pᵀ L⁻¹ P`` for ``A = Pᵀ L P R``. Not ``Aᵀ``: a float32 Cayley block is
    orthogonal only to ~``b·eps``, and ``Aᵀ`` as the inverse moved a float32 weight by 25 eps
    per merge/unmerge cycle, the same way each time (Note [exact unmerge]). Each factor is solved
    against the identity of its own block size (a Monarch matrix has ``r × r`` and ``b × b``
    blocks)."""
    factors = []
    for B in reversed(A.factors):
        B = B.to(dtype)
        eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
        factors.append(torch.linalg.solve(B, eye.expand_as(B)))
    perms = [None if P is None else invert_permutation(P) for P in reversed(A.perms)]
    return GSMatrix(factors, perms)


def _cast(A: GSMatrix, dtype: torch.dtype) -> GSMatrix:
    """``A`` with its factors in ``dtype`` (the same matrix, held more precisely)."""
    if A.dtype == dtype:
        return A
    return GSMatrix([B.to(dtype) for B in A.factors], list(A.perms))


class WeightMerge:
    """Merge arithmetic of :class:`sorth.tuner.layer.SOrthLayer`, which it is a base of.

    Uses the layer's adapter tables (``sorth_in``, ``sorth_out``, ``sorth_s``,
    ``sorth_on_weight``), its weight layout (``_w_out_dim``, ``_in_rows``, ``_from_in_rows``),
    ``_matrix`` and PEFT's ``get_base_weight`` / ``set_base_weight`` / ``merged_adapters``;
    keeps ``_merge_snapshot`` (set to ``None`` by the layer's ``__init__``).
    """

    def _compute_dtype(self, W: torch.Tensor) -> torch.dtype:
        return torch.float64 if W.dtype == torch.float64 else torch.float32

    @staticmethod
    def _inverse_dtype(W: torch.Tensor) -> torch.dtype:
        """Unmerging runs in float64 (float32 where the device has none, MPS), so that the
        inverse of the merge's own float32 matrices is exact to far below a float32 ulp."""
        return torch.float32 if W.device.type == "mps" else torch.float64

    def _apply_to_weight(
        self,
        W: torch.Tensor,
        name: str,
        inverse: bool,
        dropout: bool = False,
        precise: bool = False,
    ) -> torch.Tensor:
        """``diag(s)·A_out·W·A_in`` (or its inverse), weight in the base layout.

        The matrices are the forward's own (float32; float64 for a float64 base). The products
        run in that dtype for the forward of a weight-side adapter (``dropout=True`` drops blocks
        in training mode as the activation path does), and in float64 for a merge
        (``precise=True``) and every unmerge, so that an unmerge inverts the merge to far below
        a float32 ulp (Note [exact unmerge]).
        """
        dtype = self._compute_dtype(W)
        work = self._inverse_dtype(W) if inverse or precise else dtype
        W = W.to(work)
        on_weight = self.sorth_on_weight[name]
        A_in = self._matrix(self.sorth_in, name, dtype, dropout=dropout)
        A_out = self._matrix(self.sorth_out, name, dtype, dropout=dropout)
        s = self.sorth_s[name].to(dtype).to(work) if name in self.sorth_s else None
        shape = [1] * W.dim()
        shape[self._w_out_dim] = -1
        if inverse and s is not None:
            W = W / s.view(shape)
        if A_in is not None:
            A_in = _inverse(A_in, work) if inverse else _cast(A_in, work)
            rows = self._in_rows(W, on_weight) @ A_in  # W·A_in, or W·A_in⁻¹
            W = self._from_in_rows(rows, W, on_weight)
        if A_out is not None:
            A_out = _inverse(A_out, work) if inverse else _cast(A_out, work)
            W = A_out.apply(W.movedim(self._w_out_dim, -1)).movedim(-1, self._w_out_dim)
        if not inverse and s is not None:
            W = W * s.view(shape)
        return W

    def _precise(self, name: str) -> bool:
        """Merge in float64, unless the layer's forward builds this adapter's weight itself
        (Conv2d, ``conv_side="filter"``): then the merge is that same float32 arithmetic, so
        the merged layer gives the forward's numbers bit for bit."""
        return not (self._fold_in_forward or self.sorth_on_weight[name])

    def get_merged_weight(self, adapter_name: str) -> torch.Tensor:
        """``diag(s)·A_out·W·A_in`` for one adapter as a merge computes it, returned in float32
        (float64 for float64 bases)."""
        check_unsharded(self.get_base_layer().weight, "compute the merged weight")
        W = self.get_base_weight()
        merged = self._apply_to_weight(
            W, adapter_name, inverse=False, precise=self._precise(adapter_name)
        )
        return merged.to(self._compute_dtype(W))

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
        """One merge call's result in ``W0``'s dtype and layout (refuses non-finite, also a
        value that overflows that dtype)."""
        W = W0
        for name in names:
            W = self._apply_to_weight(W, name, inverse=False, precise=self._precise(name))
            if not torch.isfinite(W).all():
                raise ValueError(NAN_MESSAGE.format(name))
        W = self._like(W, W0)
        if not torch.isfinite(W).all():
            raise ValueError(NAN_MESSAGE.format(names[-1]) + f" (overflows {W0.dtype})")
        return W

    @torch.no_grad()
    def check_merge(self, adapter_names: list[str] | None = None) -> None:
        """Raise the error :meth:`merge` would raise for ``adapter_names``, changing nothing:
        the merged weight is computed, checked and dropped (see ``SOrthModel.merge_adapter``)."""
        wanted = self.active_adapters if adapter_names is None else adapter_names
        names = self._present([a for a in wanted if a not in self.merged_adapters])
        if names:
            check_unsharded(self.get_base_layer().weight, "merge the adapter")
            self._merged(self.get_base_weight(), names)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the base weight, in the order they are applied.

        All-or-nothing: every adapter's weight is computed first and the base weight and
        ``merged_adapters`` change only if all succeed. A non-finite result is refused with
        ``safe_merge=True`` (PEFT's message); sorth also refuses it without ``safe_merge``,
        since the base weight could not be restored from it.

        Note [exact unmerge]: by default nothing is kept: :meth:`unmerge` inverts the merges
        (``A⁻¹`` by block solves, ``1/s``), so a merged model holds each
        weight once, as PEFT's methods do. The inverse is exact up to rounding: one
        merge/unmerge cycle moves a float32 weight by a few ulps, a bfloat16 one by at most one
        ulp on some entries, and repeated cycles drift like a random walk (measured in the
        docs' PEFT adapter page). With ``SOrthConfig(exact_unmerge=True)`` — and by default
        (``None``) on a layer whose forward builds the adapted weight in float32 (Conv2d), since
        there an inverse moves the weight by a few ulps per cycle and the forward's numbers
        after an unmerge are no longer bit for bit those before the merge — the base weight
        tensor replaced by the first merge is kept (not copied: the layer just does not free
        it, so the adapted weights are held twice while merged), and :meth:`unmerge` puts the
        original bits back when the current weight is still bit for bit what the merges wrote
        (checked by redoing them); otherwise it inverts. A tied weight (Note [tied weights])
        and a quantized one (:mod:`sorth.tuner.bnb`) are always restored exactly, at no cost.
        """
        names = self._present(check_adapters_to_merge(self, adapter_names))
        if not names:
            return
        check_unsharded(self.get_base_layer().weight, "merge the adapter")  # Note [sharded merge]
        W0 = self.get_base_weight()
        merged = self._merged(W0, names)
        if self.shares_weight and not self.merged_adapters:
            self._untie(merged)  # Note [tied weights]: unmerge puts the tied parameter back
        else:
            self.set_base_weight(merged)
        rebuilt = getattr(self, "quantization_backend", None) is not None  # (no snapshot)
        exact = self.exact_unmerge
        if exact is None:  # a float32 merge (the forward's arithmetic) is not inverted exactly
            exact = not all(self._precise(n) for n in names)
        keep = exact and self._shared_weight is None and not rebuilt
        if keep and not self.merged_adapters:
            self._merge_snapshot = (W0, [])
        if self._merge_snapshot is not None:
            self._merge_snapshot[1].append(list(names))
        self.merged_adapters.extend(names)

    def _untie(self, merged: torch.Tensor) -> None:
        """Note [tied weights]: a base weight tied to another module's (``lm_head`` and
        ``embed_tokens`` with ``tie_word_embeddings=True``) is one parameter; writing the merged
        weight into it would change the other module too. The first merge therefore gives this
        layer its own parameter holding the merged weight and keeps the tied one (no copy: the
        other module holds it anyway); :meth:`unmerge` puts it back, tie and bits as before.
        ``merge_and_unload`` leaves the two untied, and PEFT then sets the model config's
        ``tie_word_embeddings=False``, so a saved merged model reloads as it was merged."""
        base = self.get_base_layer()
        self._shared_weight = base.weight
        base.weight = torch.nn.Parameter(merged, requires_grad=base.weight.requires_grad)

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
        else the inverse, last merged first, with ``A⁻¹`` (block solves) and ``1/s``.
        All-or-nothing, like :meth:`merge`: on an error the weight and ``merged_adapters`` are
        left as they were."""
        if not self.merged_adapters:
            self._merge_snapshot = None
            return
        check_unsharded(self.get_base_layer().weight, "unmerge the adapter")
        if self._shared_weight is not None:  # Note [tied weights]
            self.get_base_layer().weight = self._shared_weight
            self._shared_weight = None
            self.merged_adapters.clear()
            return
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

"""sorth: structured orthogonal adaptation with Group-and-Shuffle (GS) matrices.

Core math (this package without :mod:`sorth.tuner`) imports only torch.
"""

from __future__ import annotations

from sorth import _peft_hook
from sorth.blockdiag import blockdiag_apply, blockdiag_to_dense
from sorth.errors import (
    BlockSizeError,
    MethodError,
    PermutationError,
    ShapeError,
    SOrthValueError,
)
from sorth.gs import (
    GSMatrix,
    gs_apply,
    gs_apply_reference,
    min_butterfly_factors_for_density,
    min_factors_for_density,
    resolve_blocks,
)
from sorth.orthogonal import (
    cayley,
    cayley_neumann,
    expm,
    neumann_error_bound,
    orthogonal_blocks,
    orthogonality_error,
    pack_skew,
    skew,
    unpack_skew,
)
from sorth.parametrizations import GSOrthogonal
from sorth.permutations import (
    butterfly_permutation,
    compose_permutations,
    gs_permutation,
    identity_permutation,
    invert_permutation,
    paired_permutation,
    permutation_matrix,
    permute,
)

__version__ = "0.1.0"

_TUNER_EXPORTS = ("SOrthConfig", "SOrthModel")


def __getattr__(name: str):
    """Lazy ``sorth.SOrthConfig`` / ``sorth.SOrthModel``: importing them imports PEFT."""
    if name in _TUNER_EXPORTS:
        import sorth.tuner

        return getattr(sorth.tuner, name)
    raise AttributeError(f"module 'sorth' has no attribute {name!r}")


# Note [registration] (sorth/_peft_hook.py): register with PEFT now if it is imported, else
# right after it is; plain `import sorth` never imports PEFT itself.
_peft_hook.install()

__all__ = [
    "BlockSizeError",
    "GSMatrix",
    "GSOrthogonal",
    "MethodError",
    "PermutationError",
    "SOrthConfig",
    "SOrthModel",
    "SOrthValueError",
    "ShapeError",
    "__version__",
    "blockdiag_apply",
    "blockdiag_to_dense",
    "butterfly_permutation",
    "cayley",
    "cayley_neumann",
    "compose_permutations",
    "expm",
    "gs_apply",
    "gs_apply_reference",
    "gs_permutation",
    "identity_permutation",
    "invert_permutation",
    "min_butterfly_factors_for_density",
    "min_factors_for_density",
    "neumann_error_bound",
    "orthogonal_blocks",
    "orthogonality_error",
    "pack_skew",
    "paired_permutation",
    "permutation_matrix",
    "permute",
    "resolve_blocks",
    "skew",
    "unpack_skew",
]

"""sorth: structured orthogonal adaptation with Group-and-Shuffle (GS) matrices.

Core math (this package without :mod:`sorth.tuner`) imports only torch.
"""

from __future__ import annotations

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

__all__ = [
    "BlockSizeError",
    "GSMatrix",
    "GSOrthogonal",
    "MethodError",
    "PermutationError",
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

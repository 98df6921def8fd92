"""Deprecated spellings still work, with a :class:`DeprecationWarning` naming the new one.

pyproject's ``filterwarnings = error::DeprecationWarning:sorth.*`` turns a deprecation that sorth
itself triggers into an error in every test, so no sorth code uses an old name; these tests call
the old names from outside sorth and expect the warning.
"""

from __future__ import annotations

import pytest
import torch

import sorth
from sorth.errors import SOrthValueError
from sorth.nn import GSOrthogonalLinear


def test_orthogonal_blocks_method_keyword() -> None:
    K = sorth.skew(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(DeprecationWarning, match=r"orthogonal_blocks\(method=\.\.\.\)"):
        Q = sorth.orthogonal_blocks(K, method="expm")
    torch.testing.assert_close(Q, sorth.orthogonal_blocks(K, orthogonal_map="expm"))


def test_gs_orthogonal_method_keyword_and_attribute() -> None:
    with pytest.warns(DeprecationWarning, match=r"GSOrthogonal\(method=\.\.\.\)"):
        q = sorth.GSOrthogonal(16, block_size=4, method="expm")
    assert q.orthogonal_map == "expm"
    assert "orthogonal_map='expm'" in repr(q)
    with pytest.warns(DeprecationWarning, match="GSOrthogonal.method is deprecated"):
        assert q.method == "expm"
    with pytest.warns(DeprecationWarning, match="GSOrthogonal.method is deprecated"):
        q.method = "cayley"
    assert q.orthogonal_map == "cayley"
    with pytest.raises(SOrthValueError, match="disagree"):
        sorth.GSOrthogonal(16, block_size=4, orthogonal_map="expm", method="cayley_neumann")


def test_gs_orthogonal_linear_method_keyword() -> None:
    with pytest.warns(DeprecationWarning, match=r"GSOrthogonalLinear\(method=\.\.\.\)"):
        lin = GSOrthogonalLinear(16, 8, block_size=4, method="expm")
    assert lin.orth.orthogonal_map == "expm"


def test_no_old_name_is_left_in_the_core() -> None:
    assert not hasattr(sorth.orthogonal, "METHODS")  # the adapters' table is the only METHODS
    assert sorth.orthogonal.ORTHOGONAL_MAPS == ("cayley", "expm", "cayley_neumann")

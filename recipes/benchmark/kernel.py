"""The GS multiply alone (``--no-kernel`` skips it): GSOFT's ``Pᵀ L P R x`` on ``(tokens, d)``
against one ``torch.bmm`` of ``(2r, tokens, b) @ (2r, b, b)``, the same ``2·N·d·b`` MACs.
"""

from __future__ import annotations

import torch

from recipes.benchmark.timing import interleaved, median


def gs_kernel_throughput(d: int, tokens: int, b: int, reps: int, device: str) -> dict:
    """GSOFT multiply ``Pᵀ L P R x`` against one ``bmm`` of the same FLOPs (``2·N·d·b`` MACs)."""
    import sorth

    r = d // b
    q = sorth.GSOrthogonal(d, block_size=b, device=device)
    q.reset_parameters("random", std=0.1)
    with torch.no_grad():
        A = q.matrix()
    x = torch.randn(tokens, d, device=device)
    hb = torch.randn(2 * r, tokens, b, device=device)
    blocks = torch.randn(2 * r, b, b, device=device)
    fs = [f.detach().clone().requires_grad_() for f in A.factors]
    xg = x.clone().requires_grad_()
    hg = hb.clone().requires_grad_()
    bg = blocks.clone().requires_grad_()
    gy, gh = torch.randn_like(x), torch.randn_like(hb)

    def gs_fwd() -> None:
        with torch.no_grad():
            A.apply(x)

    def bmm_fwd() -> None:
        with torch.no_grad():
            torch.bmm(hb, blocks)

    def gs_fwd_bwd() -> None:
        type(A)._trusted(fs, A.perms, A.plan).apply(xg).backward(gy)

    def bmm_fwd_bwd() -> None:
        torch.bmm(hg, bg).backward(gh)

    t = interleaved(
        {"gs": gs_fwd, "bmm": bmm_fwd, "gs_fb": gs_fwd_bwd, "bmm_fb": bmm_fwd_bwd},
        reps,
        3,
        device,
    )
    med = {k: median(v) for k, v in t.items()}
    return {
        "d": d,
        "tokens": tokens,
        "block_size": b,
        "gs_fwd_ms": 1e3 * med["gs"],
        "bmm_fwd_ms": 1e3 * med["bmm"],
        "fwd_throughput_vs_bmm": med["bmm"] / med["gs"],
        "gs_fwd_bwd_ms": 1e3 * med["gs_fb"],
        "bmm_fwd_bwd_ms": 1e3 * med["bmm_fb"],
        "fwd_bwd_throughput_vs_bmm": med["bmm_fb"] / med["gs_fb"],
    }

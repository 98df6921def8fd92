"""Real data: a small GS-LipConvNet on scikit-learn's bundled digits (1,797 real 8×8 images).

Upscaled to 32×32, LipConvNet-5 (GS (4, −), width 8, 0.33M parameters), 6 epochs of SGD with a
one-cycle schedule on CPU. The certificate uses the *measured* Lipschitz bound of the trained
network (never an assumed 1). An untrained network of the same shape is the control.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader

import sorth.nn as snn

EPS = 36 / 255  # the CIFAR benchmark radius; digits live in [0, 1]^(32×32) like CIFAR pixels
MIN_CLEAN, MIN_CERTIFIED = 0.80, 0.70


def _train(net: torch.nn.Module, train, epochs: int, lr: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@pytest.mark.slow
def test_gs_lipconvnet_on_digits_reaches_certified_accuracy() -> None:
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    train, test = snn.load_digits_dataset(32, seed=0)
    test_loader = DataLoader(test, batch_size=256)

    def make() -> snn.LipConvNet:
        g = torch.Generator().manual_seed(0)
        return snn.LipConvNet(5, "gs", (4, None), init_channels=8, num_classes=10,
                              in_channels=1, generator=g)  # fmt: skip

    untrained = make()
    L0 = snn.lipschitz_bound(untrained, (1, 32, 32))
    before = snn.certified_accuracy(untrained, test_loader, eps=EPS, lipschitz=L0)

    net = make()
    t0 = time.perf_counter()
    _train(net, train, epochs=6, lr=0.1, seed=0)
    seconds = time.perf_counter() - t0
    L = snn.lipschitz_bound(net, (1, 32, 32))
    after = snn.certified_accuracy(net, test_loader, eps=(EPS, 72 / 255, 0.5), lipschitz=L)
    print(
        f"\ndigits: train {seconds:.0f}s, Lipschitz bound {L:.6f}; trained clean {after.clean:.3f}"
        f", certified {after.certified}; untrained clean {before.clean:.3f}, certified "
        f"{before.at(EPS):.3f}"
    )
    assert abs(L - 1) < 1e-3
    assert after.clean >= MIN_CLEAN
    assert after.at(EPS) >= MIN_CERTIFIED
    assert before.clean < 0.2
    assert before.at(EPS) < 0.2

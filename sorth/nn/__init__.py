"""sorth.nn: certified 1-Lipschitz networks with SOC and GS orthogonal convolutions.

Layers keep the ``torch.nn`` conventions (``device=``/``dtype=`` factory kwargs,
``extra_repr``, ``state_dict``). Imports only torch (scikit-learn only inside
:func:`load_digits_dataset`).
"""

from __future__ import annotations

from sorth.nn.activations import MaxMin, MaxMinPermuted, max_min, max_min_permuted
from sorth.nn.certify import (
    CertifiedAccuracy,
    certified_accuracy,
    certified_radius,
    exact_conv_singular_values,
    layer_lipschitz_bounds,
    layer_lipschitz_estimates,
    layer_singular_values,
    lipschitz_bound,
    lipschitz_estimate,
)
from sorth.nn.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    augment_crop_flip,
    load_cifar,
    load_digits_dataset,
)
from sorth.nn.gs_conv import GSOrthogonalConv2d
from sorth.nn.linear import CayleyLinear, GSOrthogonalLinear
from sorth.nn.lipconvnet import LipConvNet, Normalize, SpaceToDepth, nominal_lipschitz
from sorth.nn.shuffle import ChannelShuffle, channel_permutation, channel_shuffle
from sorth.nn.soc import SOC2d, conv_exponential, skew_kernel, transpose_kernel
from sorth.nn.spectra import conv_norm_bound

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CayleyLinear",
    "CertifiedAccuracy",
    "ChannelShuffle",
    "GSOrthogonalConv2d",
    "GSOrthogonalLinear",
    "LipConvNet",
    "MaxMin",
    "MaxMinPermuted",
    "Normalize",
    "SOC2d",
    "SpaceToDepth",
    "augment_crop_flip",
    "certified_accuracy",
    "certified_radius",
    "channel_permutation",
    "channel_shuffle",
    "conv_exponential",
    "conv_norm_bound",
    "exact_conv_singular_values",
    "layer_lipschitz_bounds",
    "layer_lipschitz_estimates",
    "layer_singular_values",
    "lipschitz_bound",
    "lipschitz_estimate",
    "load_cifar",
    "load_digits_dataset",
    "max_min",
    "max_min_permuted",
    "nominal_lipschitz",
    "skew_kernel",
    "transpose_kernel",
]

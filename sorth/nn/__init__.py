"""sorth.nn: certified Lipschitz networks: SOC / GS orthogonal convolutions, transformers.

Layers keep the ``torch.nn`` conventions (``device=``/``dtype=`` factory kwargs,
``extra_repr``, ``state_dict``). Imports only torch (scikit-learn only inside
:func:`load_digits_dataset`).
"""

from __future__ import annotations

from sorth.nn.activations import MaxMin, MaxMinPermuted, max_min, max_min_permuted
from sorth.nn.attention import BlockBound, DotProductAttention, L2Attention
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
from sorth.nn.constraints import (
    SpectralLinear,
    hard_cap,
    project_model_,
    soft_cap,
    soft_cap_strength,
    spectral_norm_bound,
    spectral_normalize,
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
from sorth.nn.muon import Muon, newton_schulz
from sorth.nn.shuffle import ChannelShuffle, channel_permutation, channel_shuffle
from sorth.nn.soc import SOC2d, conv_exponential, skew_kernel, transpose_kernel
from sorth.nn.softmax_bounds import causal_column_sum_bound, lambert_w, softmax_jacobian_bound
from sorth.nn.spectra import conv_norm_bound
from sorth.nn.transformer import (
    ConvexResidual,
    LipschitzCertificate,
    LipschitzMLP,
    LipschitzTransformer,
    ScaledGELU,
    UnitEmbedding,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "BlockBound",
    "CayleyLinear",
    "CertifiedAccuracy",
    "ChannelShuffle",
    "ConvexResidual",
    "DotProductAttention",
    "GSOrthogonalConv2d",
    "GSOrthogonalLinear",
    "L2Attention",
    "LipConvNet",
    "LipschitzCertificate",
    "LipschitzMLP",
    "LipschitzTransformer",
    "MaxMin",
    "MaxMinPermuted",
    "Muon",
    "Normalize",
    "SOC2d",
    "ScaledGELU",
    "SpaceToDepth",
    "SpectralLinear",
    "UnitEmbedding",
    "augment_crop_flip",
    "causal_column_sum_bound",
    "certified_accuracy",
    "certified_radius",
    "channel_permutation",
    "channel_shuffle",
    "conv_exponential",
    "conv_norm_bound",
    "exact_conv_singular_values",
    "hard_cap",
    "lambert_w",
    "layer_lipschitz_bounds",
    "layer_lipschitz_estimates",
    "layer_singular_values",
    "lipschitz_bound",
    "lipschitz_estimate",
    "load_cifar",
    "load_digits_dataset",
    "max_min",
    "max_min_permuted",
    "newton_schulz",
    "nominal_lipschitz",
    "project_model_",
    "skew_kernel",
    "soft_cap",
    "soft_cap_strength",
    "softmax_jacobian_bound",
    "spectral_norm_bound",
    "spectral_normalize",
    "transpose_kernel",
]

"""What kind of quantized layer a base module is, without importing any quantization library.

:func:`bnb_kind` recognises the bitsandbytes layers sorth adapts (:mod:`sorth.tuner.bnb`);
:func:`unsupported_reason` says why any other quantized layer (HQQ, torchao, GPTQ/AWQ, quanto,
AQLM, EETQ, fp8, bitnet, ...) cannot be adapted, from the class / weight type's module and name
or an integer / float8 weight dtype. :mod:`sorth.tuner.model` turns that reason into a clear
:class:`~sorth.tuner.errors.UnsupportedLayerError`. A leaf: imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SUPPORTED_QUANTIZED", "bnb_kind", "unsupported_reason"]

SUPPORTED_QUANTIZED = (
    "bitsandbytes Linear4bit (NF4 / FP4, any compute dtype) and Linear8bitLt "
    "(BitsAndBytesConfig(load_in_4bit=True) / load_in_8bit=True)"
)


def bnb_kind(base: nn.Module) -> str | None:
    """``"4bit"`` / ``"8bit"`` for bitsandbytes' Linear4bit (and LinearNF4/FP4) /
    Linear8bitLt and their subclasses, by class name in the MRO (bitsandbytes not imported)."""
    for cls in type(base).__mro__:
        if cls.__module__.split(".")[0] == "bitsandbytes":
            if cls.__name__ == "Linear4bit":
                return "4bit"
            if cls.__name__ == "Linear8bitLt":
                return "8bit"
    return None


# top-level package of a layer's (or its weight's) class -> the quantization method's name
_QUANT_PACKAGES = {
    "bitsandbytes": "bitsandbytes",
    "hqq": "HQQ",
    "torchao": "torchao",
    "auto_gptq": "GPTQ (auto-gptq)",
    "gptqmodel": "GPTQ/AWQ (gptqmodel)",
    "awq": "AWQ (autoawq)",
    "quanto": "quanto",
    "aqlm": "AQLM",
    "eetq": "EETQ",
    "vptq": "VPTQ",
    "fbgemm_gpu": "FBGEMM",
    "compressed_tensors": "compressed-tensors",
    "transformer_engine": "TransformerEngine",
    "neural_compressor": "Intel Neural Compressor",
    "exllamav2": "EXL2",
    "marlin": "Marlin",
    "spqr_quant": "SpQR",
    "flute": "HIGGS (flute)",
}
_QUANT_MODULE_PREFIXES = {
    "optimum.quanto": "quanto",
    "optimum.gptq": "GPTQ (optimum)",
    "transformers.integrations": "a transformers quantization integration",
    "torch.ao.nn.quantized": "torch.ao quantization",
    "torch.nn.quantized": "torch.ao quantization",
    "torch.ao.nn.qat": "torch.ao quantization-aware training",
}
_QUANT_NAME_HINTS = ("QuantLinear", "QLinear", "WQLinear", "QuantizedLinear", "Fp8Linear")
_FLOAT8 = {getattr(torch, n) for n in dir(torch) if n.startswith("float8_")}


def _package_of(cls: type) -> str | None:
    module = cls.__module__ or ""
    for prefix, name in _QUANT_MODULE_PREFIXES.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    return _QUANT_PACKAGES.get(module.split(".")[0])


def unsupported_reason(base: nn.Module) -> str | None:
    """Why ``base`` looks quantized in a way sorth cannot adapt, or ``None``.

    Detected without importing any quantization library: the layer's classes (MRO) or its
    weight's class come from a quantization package, the class name says so (``QuantLinear``,
    ``WQLinear_*``, ...), or the weight is stored as an integer / float8 tensor. bitsandbytes
    ``Linear4bit`` / ``Linear8bitLt`` return ``None`` (supported).
    """
    if bnb_kind(base) is not None:
        return None
    for cls in type(base).__mro__[:-1]:
        name = _package_of(cls)
        if name is not None:
            return f"a {name} quantized layer ({cls.__module__}.{cls.__name__})"
        if any(hint in cls.__name__ for hint in _QUANT_NAME_HINTS):
            return f"a quantized layer ({cls.__module__}.{cls.__name__})"
    weight = getattr(base, "weight", None)
    layer = f"{type(base).__module__}.{type(base).__name__}"
    if isinstance(weight, torch.Tensor):
        wcls = type(weight)
        if wcls.__module__.split(".")[0] != "torch":
            name = _package_of(wcls) or wcls.__module__.split(".")[0]
            return (
                f"a {layer} quantized by {name} (its weight is a {wcls.__module__}.{wcls.__name__})"
            )
        if not weight.dtype.is_floating_point or weight.dtype in _FLOAT8:
            return f"a {layer} whose weight is stored as {weight.dtype} (quantized)"
    return None

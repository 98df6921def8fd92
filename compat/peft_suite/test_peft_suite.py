"""PEFT's own generic tests (``tests/test_custom_models.py`` of the installed PEFT's sdist) over
sorth's cases.

Every test of PEFT's ``TestPeftCustomModel``, ``TestMultipleActiveAdapters`` and
``TestRequiresGrad`` that is parametrized over PEFT's case tables (``TEST_CASES``,
``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``) or over its config classes (``ALL_PEFT_CONFIG_CLASSES``,
which then builds ``SOrthConfig(target_modules=...)`` with the default size) runs here with
sorth's rows instead (:mod:`.cases`); its body is PEFT's, unchanged. Tests written for one
other method (``test_requires_grad_lora_*``, LoRA's ``add_weighted_adapter``, ...) are not
collected. Deliberate differences from PEFT are in :data:`DIFFERENCES`. Rows outside
:data:`~compat.peft_suite.cases.FAST_CASES` are marked ``slow``.
"""

from __future__ import annotations

import functools

import pytest
import torch

import sorth.tuner  # noqa: F401 - registers PeftType.SORTH
from compat.peft_suite.cases import (
    EXTRA_MODELS,
    FAST_CASES,
    MULTIPLE_ACTIVE_CASES,
    SORTH_CASES,
)
from compat.peft_suite.sdist import SdistUnavailableError, load_peft_tests
from sorth.tuner import SOrthConfig

try:
    tcm = load_peft_tests("test_custom_models")
except SdistUnavailableError as err:
    pytest.skip(f"PEFT's test suite not run: {err}", allow_module_level=True)

CASE_ARGS = "test_name, model_id, config_cls, config_kwargs"
MULTI_ARGS = "test_name, tuner_method, config_cls, config_kwargs_1, config_kwargs_2"

# sorth differs from PEFT's own methods on purpose where PEFT's suite does not look (each is
# tested in tests/tuner/test_contract.py): a merge with a non-finite result is refused even
# without safe_merge; "cayley_neumann" solves exactly the blocks whose Neumann bound exceeds 1e-2
# (PEFT's OFT keeps the series and diverges after PEFT's own lr-0.5 steps); unmerge inverts the
# merge within an ulp (Conv2d: restores the original bits, Note [exact unmerge]); b = 1 and
# Embedding(max_norm) with a scale are refused.
#
# Where a PEFT check does not apply, on purpose: (test, case) -> the one-line reason. The
# property is checked by sorth's own suite instead where one exists (named in the reason).
_MAX_NORM = (
    "nn.Embedding(max_norm=...) renormalises the rows it looks up in place on every forward "
    "(torch's behaviour, with or without an adapter), so its base weight changes; sorth supports "
    "it with scale=False only (tests/tuner/test_contract.py: merged == unmerged)"
)
DIFFERENCES: dict[tuple[str, str], str] = {
    ("test_only_params_are_updated", "EmbMaxNorm no scale"): _MAX_NORM,
    ("test_parameters_after_loading_model", "EmbMaxNorm no scale"): _MAX_NORM,
}


class _Models(tcm.MockTransformerWrapper):
    """PEFT's test models plus :data:`~compat.peft_suite.cases.EXTRA_MODELS`."""

    @classmethod
    def from_pretrained(cls, model_id, dtype=None):
        if model_id in EXTRA_MODELS:
            torch.manual_seed(0)
            return EXTRA_MODELS[model_id]().to(dtype or torch.float32)
        return super().from_pretrained(model_id, dtype=dtype)


def _reparametrize(fn, argnames: str, values: list, ids=None):
    """``fn`` with its ``parametrize(argnames, ...)`` mark replaced by ``values`` (rows listed
    in :data:`DIFFERENCES` for this test are skipped with their reason)."""
    params = []
    for row in values:
        marks = []
        if isinstance(row, tuple) and (fn.__name__, row[0]) in DIFFERENCES:
            marks.append(pytest.mark.skip(reason=DIFFERENCES[(fn.__name__, row[0])]))
        if values is SORTH_CASES and row[0] not in FAST_CASES:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(*row, marks=marks) if isinstance(row, tuple) else row)
    values = params

    @functools.wraps(fn)
    def test(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    marks = [
        m
        for m in getattr(fn, "pytestmark", [])
        if not (m.name == "parametrize" and m.args[0].replace(" ", "") == argnames.replace(" ", ""))
    ]
    test.pytestmark = marks
    return pytest.mark.parametrize(argnames, values, ids=ids)(test)


def _param_names(fn) -> set[str]:
    return {
        m.args[0].replace(" ", "") for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"
    }


def _sorth_class(base: type, name: str) -> type:
    """A subclass of PEFT's test class whose case-parametrized tests run sorth's rows."""
    attrs: dict = {}
    case_ids = [row[0] for row in SORTH_CASES]
    multi_ids = [row[0] for row in MULTIPLE_ACTIVE_CASES]
    for attr in dir(base):
        if not attr.startswith("test"):
            continue
        fn = getattr(base, attr)
        params = _param_names(fn)
        if CASE_ARGS.replace(" ", "") in params:
            attrs[attr] = _reparametrize(fn, CASE_ARGS, SORTH_CASES, ids=case_ids)
        elif MULTI_ARGS.replace(" ", "") in params:
            attrs[attr] = _reparametrize(fn, MULTI_ARGS, MULTIPLE_ACTIVE_CASES, ids=multi_ids)
        elif "config_cls" in params:
            attrs[attr] = _reparametrize(fn, "config_cls", [SOrthConfig], ids=["SOrthConfig"])
        else:
            attrs[attr] = None  # a test written for one other PEFT method: not collected
    if hasattr(base, "transformers_class"):
        attrs["transformers_class"] = _Models
    return type(name, (base,), attrs)


TestSOrthCustomModel = _sorth_class(tcm.TestPeftCustomModel, "TestSOrthCustomModel")
TestSOrthMultipleActiveAdapters = _sorth_class(
    tcm.TestMultipleActiveAdapters, "TestSOrthMultipleActiveAdapters"
)
TestSOrthRequiresGrad = _sorth_class(tcm.TestRequiresGrad, "TestSOrthRequiresGrad")
# bias="all" / "sorth_only" on every row (one adapter: PEFT allows only one with a bias)
TestSOrthFsdpStateDict = _sorth_class(tcm.TestPeftFsdpStateDict, "TestSOrthFsdpStateDict")

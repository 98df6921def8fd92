"""Framework glue: PEFT, transformers, diffusers, accelerate, atomic I/O and offline test models.

Each sub-module is imported on its own and only when used, so ``import sorth`` (and
``import sorth.integrations``) pulls in nothing but torch. Sub-modules and the extra each needs:

* :mod:`sorth.integrations.methods` (``peft`` to build PEFT configs): ``METHODS``, the one
  method registry (name → config) of the recipes, the benchmark, the demo and the command.
* :mod:`sorth.integrations.peft` (``peft``): ``make_peft_config``, ``load_adapter``,
  ``merge_and_unload``, ``count_parameters``.
* :mod:`sorth.integrations.transformers` (``peft``): ``from_adapter``.
* :mod:`sorth.integrations.diffusers` (``diffusion``): ``load_sorth_into_pipeline``,
  ``save_pipeline_adapter``.
* :mod:`sorth.integrations.accelerate` (``peft``): ``save_adapter``, ``rank_max_abs_diff``.
* :mod:`sorth.integrations.io` (none): ``atomic_dir``, ``atomic_file``.
* :mod:`sorth.integrations.testing` (``diffusion``): tiny offline Llama / RoBERTa / Stable
  Diffusion / CLIP / DINO folders; :mod:`sorth.integrations.pytest_fixtures` (``test``).

A missing optional dependency raises :class:`MissingExtraError` (an ``ImportError``) naming the
extra to install, e.g. the ``diffusion`` extra (in a clone:
``pip install -c constraints.txt -e ".[diffusion]"``).
"""

from __future__ import annotations

from sorth.integrations._extras import MissingExtraError, require

__all__ = ["MissingExtraError", "require"]

"""PEFT's own generic test suite, run against sorth.

``test_peft_suite.py`` re-parametrizes the test classes of PEFT's ``tests/test_custom_models.py``
(with ``tests/testing_common.py`` behind them) over sorth's cases (:mod:`.cases`). PEFT's test
files come from the sdist of the installed PEFT version, fetched by pip into
``build/peft-tests/`` on first use and never committed (:mod:`.sdist`).

Run: ``python -m pytest compat/peft_suite`` (part of ``make test``).
"""

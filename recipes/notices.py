"""Three notices of the pinned libraries that concern no feature a recipe uses, filtered by name.

Note [known notices]: with the versions in ``constraints.txt`` every recipe that builds a PEFT
model printed lines that are not about anything it does:

* ``Failed to load CPU gemm_4bit_forward from kernels-community: ...`` — bitsandbytes 0.50.2
  logs it through its logger ``bitsandbytes.backends.cpu.ops`` when it is imported on a CPU with
  AVX512-BF16, after trying to fetch an optional 4-bit CPU kernel from the Hugging Face Hub
  (the ``kernels`` package); it then uses its own kernel. PEFT imports bitsandbytes whenever it
  is installed (the ``quant`` extra, part of ``all``), so a run with no quantized layer
  printed it too.
* ``FutureWarning: `is_gradient_checkpointing` is deprecated ...`` — PEFT 0.21.2's
  ``PeftModel.__init__`` reads that property of every transformers model, and transformers 5.23
  deprecated it. No argument avoids it: the read is PEFT's own.

* ``Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
  detect it.`` — DeepSpeed 0.19.8 (the ``distributed`` extra) logs it through its logger
  ``DeepSpeed`` when it is imported on a machine without an accelerator, and accelerate 1.15's
  ``unwrap_model`` imports DeepSpeed whenever it is installed, so every run that saved an
  adapter printed it, ``--deepspeed`` or not. On CPU DeepSpeed's choice is the right one.

:func:`quiet_known_notices` drops exactly these messages (a logging filter on each one
logger, matching the message's start; a warnings filter on that one message and category) and
undoes both on exit: every other warning still shows. Drop an entry here once the pins move past
the versions that print it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["KNOWN_LOG_NOTICES", "KNOWN_WARNINGS", "quiet_known_notices"]

# (logger name, start of the message) of each known log notice (see Note [known notices])
KNOWN_LOG_NOTICES: tuple[tuple[str, str], ...] = (
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator"),
)
# (warning category, regex matching the start of the message) of each known warning
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose unformatted message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_known_notices() -> Iterator[None]:
    """Within the block, hide the known notices of Note [known notices]; restore on exit."""
    filters = [
        (logging.getLogger(name), _DropMessage(prefix)) for name, prefix in KNOWN_LOG_NOTICES
    ]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for category, message in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)

"""``python -m sorth.cli``: the same as the ``sorth`` command."""

import sys

from sorth.cli import main

sys.exit(main())

"""``python -m recipes.benchmark``: see the package's docstring, or ``--help``."""

from recipes.benchmark.cli import main

if __name__ == "__main__":
    main()

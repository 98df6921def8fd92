"""``python -m recipes.compare``: see :mod:`recipes.compare.run`, or ``--help``."""

from recipes.compare.run import main

if __name__ == "__main__":
    main()

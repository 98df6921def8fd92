"""``python -m recipes.demo`` (``make demo``): the main job; see :mod:`recipes.demo.run`."""

from recipes.demo.run import main

if __name__ == "__main__":
    main()

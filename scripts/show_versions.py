"""Print the installed version of each package whose range pyproject.toml declares (and of the
tools the checks run with), one ``name==version`` line each; used by scripts/check_newer.sh and
scripts/check_oldest.sh in the venv they built.

    python scripts/show_versions.py
"""

import importlib.metadata as md

PACKAGES = (
    "torch", "peft", "transformers", "diffusers", "accelerate", "safetensors", "bitsandbytes",
    "triton", "deepspeed", "huggingface-hub", "numpy", "pytest", "mkdocs-material", "ruff",
)  # fmt: skip


def version(name: str) -> str:
    """``name==version``, or ``name: not installed``."""
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:
        return f"{name}: not installed"


print("\n".join(f"  {version(name)}" for name in PACKAGES))

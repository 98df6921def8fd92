"""Evidence on real data: sorth vs the orthogonal PEFT methods, SOC vs GS-SOC.

Run ``python -m recipes.compare --help``.
"""

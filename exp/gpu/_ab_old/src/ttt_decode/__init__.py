"""ttt-decode: decode throughput of recurrent language models (TTT-Linear, TTT-MLP, Mamba)."""

__version__ = "0.1.0"

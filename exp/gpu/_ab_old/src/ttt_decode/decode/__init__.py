"""Decode engine: static inference state, CUDA-graph step runner, generate loop, sampling."""

from ttt_decode.decode.engine import DecodeSession, generate, teacher_force
from ttt_decode.decode.sampling import Sampling, sample

__all__ = ["DecodeSession", "generate", "teacher_force", "Sampling", "sample"]

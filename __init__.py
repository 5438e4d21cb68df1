"""sentistream: a streaming, real-time multimodal sentiment engine."""

__version__ = "0.1.0"

"""Engine of the BERT distillation and compression suite."""
__version__ = "0.1.0"

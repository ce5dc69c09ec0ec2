"""gearshift: make pre-trained transformer language models cheaper to run."""

__version__ = "0.1.0"

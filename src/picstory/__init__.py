"""picstory: a folder of labelled images → a trained, evaluated, explained, exported and served classifier."""

__version__ = "0.1.0"

"""imgclf: a command-line toolkit for image classifiers (split, augment, train, evaluate, predict, export)."""

__version__ = "0.1.0"

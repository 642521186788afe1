"""The data path: scan -> split -> pipeline -> augment (one file each)."""

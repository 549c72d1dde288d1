"""Tests of the model and the NumPy layers: argument checks, labels and edge cases."""

"""Tests of checkpoint files (training state, debug state, safetensors, HF folders): their exact bytes and boundaries, and the one-line errors for each kind of bad file."""

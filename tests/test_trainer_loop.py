"""Tests of train_gpt2.py's loop: validation, HellaSwag, sampling, the step log line, outlier skipping and stopping."""

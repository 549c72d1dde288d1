"""Tests of train_gpt2.py's set-up: what it hands the loaders, the process launch and the log file."""

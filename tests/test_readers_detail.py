"""Tests of the shard loader, the file-header readers and writers, and AdamW: edge cases and the one-line errors."""

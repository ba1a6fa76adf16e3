"""Readers of the published layouts of the reference HAR datasets."""

"""Datasets, grading, strategies and reports."""

"""Evaluation: datasets and grading, `conclave eval` (`evals.harness`), the embedded
skillmix benchmark, and the benchmarks of the product itself (`evals.bench`)."""

"""`pgm study`: merge task experts over a grid in memory, evaluate every merge on every task, report.

spec.py reads and checks STUDY.yaml; run.py runs the cells (base, experts, merges x tasks);
report.py writes results.csv, report.md and the plot.
"""

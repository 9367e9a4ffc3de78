"""Turn a sweep into the study's tables and figures: ``python -m initopt.report SWEEP_DIR``."""

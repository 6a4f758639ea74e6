"""lrformer-bench: latency and throughput of every backend and precision, in interleaved rounds.

plan.py (what is measured, the one build() call) -> rows.py (a runtime Runner per row) -> timing.py (one
loop times every row) -> report.py (table, JSON); run.py validates the arguments and runs the stages.
"""

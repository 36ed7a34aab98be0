"""snnkern benchmark harness (``make bench``; protocol in BENCH.md, results in docs/performance.md).

``python -m bench.run --tiers cpu-small`` times the reference path (time-major ``lax.scan``) against
the planned paths on the same model, in the same process, alternating, and writes a CSV, a Markdown
table and PNG plots under ``bench/results/``. Nothing here is imported by ``snnkern`` itself.
"""

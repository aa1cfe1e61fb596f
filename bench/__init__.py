"""Side-by-side benchmarks of katclient against aiokatcp (issue 8, DESIGN.md section 5).

``python -m bench ingest|sync|requests|memory|server|all [--quick] [--json]``; see
:mod:`bench.cli` for the command line, :mod:`bench.workloads` for what each benchmark
measures and ``bench/README.md`` for the latest results.  Needs ``pip install .[bench]``
(aiokatcp, psutil).
"""

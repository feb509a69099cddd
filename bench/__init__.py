"""Benchmarks of neurocache's build and the trainer's input pipeline against the baselines.

``make bench`` (= ``python -m bench.run``) writes ``bench/results.json`` and ``docs/benchmarks.md``;
``bench/gpu.sh`` is the one-GPU end-to-end run (synth -> build -> cv -> final). Nothing here is a
test: timings depend on the machine, so they are recorded with the machine, never asserted.
"""

"""Run folders: what ``trainer cv`` and ``trainer final`` write, read back, compare and log.

* :mod:`~trainer.runs.files` -- the folder's name and its files' names, defined once.
* :mod:`~trainer.runs.write` -- a new run folder, the environment, JSON written one way.
* :mod:`~trainer.runs.results` -- ``FoldResult``, ``CVResult``, ``TestResult``: the typed JSON results.
* :mod:`~trainer.runs.folder` -- reading a run folder back (``load_run``, ``Run``, ``RunError``).
* :mod:`~trainer.runs.table` -- ``trainer runs``: every run of an outputs folder side by side.
* :mod:`~trainer.runs.tracking` -- optional MLflow logging of a finished run.

The commands that write the folders are :mod:`trainer.cv` and :mod:`trainer.final` (one place per file);
``trainer threshold`` (:mod:`trainer.threshold`) rewrites a cv run's operating-point files through the
writers ``trainer cv`` uses (:mod:`trainer.selection`).
Importing this package imports nothing else (the evaluation code reads :mod:`~trainer.runs.results`).
"""

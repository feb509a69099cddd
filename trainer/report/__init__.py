"""What a run shows: matplotlib figures (:mod:`~trainer.report.plots`, :mod:`~trainer.report.examples`)
and the self-contained ``report.html`` (:mod:`~trainer.report.html`, templates in ``templates/``).
Nothing here computes a reported number: the figures draw what :mod:`trainer.evaluation` computed.
"""

"""Learning and evaluation: feature tables (``dataset``), training with honest splits
(``training``), metrics and reports (``evaluation``, ``report``), robustness, and the
scikit-learn estimators (``estimators``; also importable as ``monitor.learn.estimators``). Needs
the ``train`` extra. May use ``core``, ``media`` and the base."""

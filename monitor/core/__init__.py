"""The method: backbone loading and embedding (``embed``), the trajectory geometry and the
21 features (``geometry``, pure math), classifiers and their artifacts (``classifier``, no
pickle), the published classifier (``published``, bundled in ``classifiers/``), and
``pipeline``, the only module that knows the stage order for a clip. May use ``media`` and
the base."""

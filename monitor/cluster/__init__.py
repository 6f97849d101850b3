"""Many ``serve`` replicas: leases and fencing counters (``leases``), which replica runs
which stream (``assignment``, a pure plan), and the clustered stream manager (``manager``).
May use ``live`` and everything below it."""

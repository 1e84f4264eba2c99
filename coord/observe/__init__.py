"""Observability: counters on the hot paths (``stats``), metrics pulled at
scrape time (``metrics``), probes (``health``), the dashboard's data
(``ring``, ``ensemble``, ``views``, ``events``).  Nothing here changes the
server's state, and the Raft core knows nothing of it."""

"""The job runtime: how wake-ups reach jobs, and progress reaches event streams.

Three roles, as Protocols in ``app.runtime.backend``, each with two implementations
(none subclasses another):

- ``Broker``: ``ArqQueue`` (arq on Redis, one queue per priority) or
  ``InProcessBroker`` (a priority queue in the API process).
- ``Runner``: ``InProcessRunner`` (the embedded default, inside ``batchd serve``) or the
  arq workers of ``batchd worker`` (``app.runtime.arq_runner`` adapts the jobs and
  crons to arq; ``workers.arq_worker`` supervises them across Redis restarts).
- ``ProgressBus``: ``RedisProgressBus`` (pub/sub between processes) or
  ``LocalProgressBus``.

The runtime imports no feature: the batch feature registers its jobs, crons and
start-up hook as a ``JobTable`` (``app.runtime.registry``), which the entry points
pass to ``build_runtime`` (``app.runtime.factory``), the one place that builds the
broker, the progress bus and the ``JobContext`` every job receives."""

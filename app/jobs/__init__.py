"""Background jobs on arq.

* `registry.py`: `@job` and `JobContext`, the shape of a job function;
* `enqueue.py`: `JobsDep`, enqueueing from a request (sent after the commit), and
  `JobStatusDep`, what a handler may read about its jobs;
* `outbox.py`: the outbox that keeps committed jobs until sent, its relay, and
  `job_info_for` (a job's state, `queued` while it waits there);
* `queue.py`: `JobQueue`, sending jobs and reading their state (`info`, `info_for`);
* `worker.py`: `WorkerSettings`, the registered jobs and cron jobs (the outbox relay too);
* `purge.py`: the cron job purging expired soft-deleted rows;
* `serialization.py`: JSON in and out of Redis.
"""

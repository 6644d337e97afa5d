"""Background jobs on arq.

* `registry.py`: `@job` and `JobContext`, the shape of a job function;
* `enqueue.py`: `JobsDep`, enqueueing from a request (sent after the commit);
* `queue.py`: `JobQueue`, sending jobs and reading their state (`info`, `info_for`);
* `worker.py`: `WorkerSettings` and the list of registered jobs and cron jobs;
* `purge.py`: the cron job purging expired soft-deleted rows;
* `serialization.py`: JSON in and out of Redis.
"""

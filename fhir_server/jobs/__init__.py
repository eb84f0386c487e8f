"""Background work: the outbox topics, the celery application and its worker, bulk data jobs."""

"""worker: Celery tasks that load a job from the database, run pft, and write results back."""

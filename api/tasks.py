"""Celery tasks of the API app: thin wrappers around plain functions."""

from celery import shared_task

from api import maintenance


@shared_task(name="api.tasks.delete_expired_tokens", ignore_result=True)
def delete_expired_tokens() -> int:
    """Hourly (beat schedule created by api/migrations/0001): expired tokens go."""
    return maintenance.delete_expired_tokens()

"""The shared cache table (throttle counters) and the hourly expired-token cleanup."""

from django.core.management import call_command
from django.db import migrations
from django.utils import timezone

TASK_NAME = "Delete expired API tokens"


def create_cache_table(apps, schema_editor):
    # Only does something when CACHES uses the database backend (the default without
    # REDIS_URL/CACHE_URL); creating it here means `migrate` is all a new install needs.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


def schedule_cleanup(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period="hours")
    PeriodicTask.objects.update_or_create(
        name=TASK_NAME,
        defaults={
            "task": "api.tasks.delete_expired_tokens",
            "interval": hourly,
            "enabled": True,
            "description": "Deletes OAuth access tokens whose hour is over.",
        },
    )
    # Tell a running beat (DatabaseScheduler) that the schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def unschedule_cleanup(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TASK_NAME).delete()


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunPython(create_cache_table, migrations.RunPython.noop),
        migrations.RunPython(schedule_cleanup, unschedule_cleanup),
    ]

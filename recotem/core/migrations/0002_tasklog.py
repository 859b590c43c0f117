"""The task log moves to core (every app's jobs write it); existing lines are copied over."""

from django.db import migrations, models


def copy_logs(apps, schema_editor):
    Old = apps.get_model("training", "TaskLog")
    New = apps.get_model("core", "TaskLog")
    New._meta.get_field("created_at").auto_now_add = False  # keep each line's own time
    batch = []
    for log in Old.objects.order_by("id").iterator():
        batch.append(
            New(
                project_id=log.project_id,
                task=log.task,
                tuning_job_id=log.tuning_job_id,
                trained_model_id=log.trained_model_id,
                level=log.level,
                contents=log.contents,
                created_at=log.created_at,
            )
        )
        if len(batch) >= 1000:
            New.objects.bulk_create(batch)
            batch = []
    New.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("training", "0003_trainedmodel_heartbeat_at"),
    ]

    operations = [
        migrations.CreateModel(
            name="TaskLog",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("project_id", models.BigIntegerField(db_index=True)),
                ("task", models.CharField(db_index=True, help_text="Celery task id.", max_length=255)),
                ("tuning_job_id", models.BigIntegerField(blank=True, db_index=True, null=True)),
                ("trained_model_id", models.BigIntegerField(blank=True, db_index=True, null=True)),
                ("level", models.CharField(default="INFO", max_length=16)),
                ("contents", models.TextField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["id"]},
        ),
        migrations.RunPython(copy_logs, migrations.RunPython.noop),
    ]

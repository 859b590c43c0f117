"""Trained models record the class and parameters they were trained with, metric keys carry
their cutoff, and the training message has an outbox flag."""

from django.db import migrations, models

METRICS = ("ndcg", "map", "recall", "hit", "precision")


def with_cutoff(metrics, cutoff):
    return {(f"{k}@{cutoff}" if k in METRICS else k): v for k, v in (metrics or {}).items()}


def forwards(apps, schema_editor):
    TrainedModel = apps.get_model("training", "TrainedModel")
    ParameterTuningJob = apps.get_model("tuning", "ParameterTuningJob")
    job_cutoff = dict(ParameterTuningJob.objects.values_list("id", "evaluation__cutoff"))
    for model in TrainedModel.objects.select_related("configuration"):
        # A model trained by a tuning job carries that job's test metrics (its evaluation cutoff);
        # every other model was scored at the default cutoff, 10.
        cutoff = job_cutoff.get(model.configuration.tuning_job_id, 10)
        model.class_name = model.configuration.recommender_class_name
        model.parameters = model.configuration.parameters_json
        model.test_metrics = with_cutoff(model.test_metrics, cutoff)
        model.save(update_fields=["class_name", "parameters", "test_metrics"])
    for job in ParameterTuningJob.objects.select_related("evaluation"):
        job.test_metrics = with_cutoff(job.test_metrics, job.evaluation.cutoff)
        job.save(update_fields=["test_metrics"])


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0005_delete_tasklog"),
        ("tuning", "0005_modelconfiguration_moved"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainedmodel",
            name="class_name",
            field=models.CharField(blank=True, default="", max_length=128),
        ),
        migrations.AddField(
            model_name="trainedmodel",
            name="parameters",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="trainedmodel",
            name="send_pending",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="trainedmodel",
            name="sent_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]

"""ModelConfiguration moves from tuning to training (tuning produces configurations, training
owns and trains them). The rows, their ids and every foreign key to them stay: the table is
renamed and only Django's model state moves."""

import django.db.models.deletion
from django.db import migrations, models


def move_content_type(apps, schema_editor, *, old: str = "tuning", new: str = "training"):
    # Permissions and admin history of the model follow it to its new app.
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label=old, model="modelconfiguration").update(app_label=new)


def move_content_type_back(apps, schema_editor):
    move_content_type(apps, schema_editor, old="training", new="tuning")


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("projects", "0001_initial"),
        # Every migration that points a foreign key at the old table runs before the rename.
        ("retraining", "0004_retrainingrun_resent_at"),
        ("training", "0003_trainedmodel_heartbeat_at"),
        ("tuning", "0004_modelconfiguration_tuning_job_id"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE tuning_modelconfiguration RENAME TO training_modelconfiguration",
                    "ALTER TABLE training_modelconfiguration RENAME TO tuning_modelconfiguration",
                )
            ],
            state_operations=[
                migrations.CreateModel(
                    name="ModelConfiguration",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=256)),
                        ("recommender_class_name", models.CharField(max_length=128)),
                        ("parameters_json", models.JSONField(default=dict)),
                        (
                            "tuning_job_id",
                            models.BigIntegerField(
                                blank=True,
                                null=True,
                                help_text="The tuning job that produced this configuration.",
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "project",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="model_configurations",
                                to="projects.project",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-id"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("project", "name"), name="model_configuration_name_unique"
                            )
                        ],
                    },
                ),
                migrations.AlterField(
                    model_name="trainedmodel",
                    name="configuration",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.RESTRICT,
                        related_name="trained_models",
                        to="training.modelconfiguration",
                    ),
                ),
            ],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tuning", "0004_modelconfiguration_tuning_job_id"),
        ("training", "0004_modelconfiguration"),
        ("retraining", "0005_model_configuration_in_training"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="parametertuningjob",
                    name=name,
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="training.modelconfiguration",
                    ),
                )
                for name in ("best_config", "warm_start_config")
            ]
            + [migrations.DeleteModel("ModelConfiguration")]
        )
    ]

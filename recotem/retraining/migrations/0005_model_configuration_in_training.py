import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("retraining", "0004_retrainingrun_resent_at"),
        ("training", "0004_modelconfiguration"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="retrainingschedule",
                    name="model_configuration",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="training.modelconfiguration",
                    ),
                )
            ]
        )
    ]

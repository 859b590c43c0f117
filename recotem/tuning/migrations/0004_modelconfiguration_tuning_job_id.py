"""A configuration remembers its tuning job by id, not by a foreign key into the tuning app:
configurations move to the training app, which must not point up at tuning."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tuning", "0003_split_semantics")]

    operations = [
        # Drops the database's foreign-key constraint; the column and its values stay.
        migrations.AlterField(
            model_name="modelconfiguration",
            name="tuning_job",
            field=models.BigIntegerField(blank=True, null=True, db_column="tuning_job_id"),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField("modelconfiguration", "tuning_job", "tuning_job_id"),
                migrations.AlterField(
                    model_name="modelconfiguration",
                    name="tuning_job_id",
                    field=models.BigIntegerField(
                        blank=True,
                        null=True,
                        help_text="The tuning job that produced this configuration.",
                    ),
                ),
            ]
        ),
    ]

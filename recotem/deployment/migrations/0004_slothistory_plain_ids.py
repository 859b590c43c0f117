"""Slot history names its models by id: an old history row must not pin an artifact on disk
(retention keeps the last RECOTEM_ROLLBACK_DEPTH models of each slot)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("deployment", "0003_routing_version")]

    operations = [
        # Each AlterField drops the foreign-key constraint; the columns and values stay.
        migrations.AlterField(
            model_name="slothistory",
            name="trained_model",
            field=models.BigIntegerField(db_column="trained_model_id"),
        ),
        migrations.AlterField(
            model_name="slothistory",
            name="previous_model",
            field=models.BigIntegerField(blank=True, null=True, db_column="previous_model_id"),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField("slothistory", "trained_model", "trained_model_id"),
                migrations.RenameField("slothistory", "previous_model", "previous_model_id"),
                migrations.AlterField(
                    model_name="slothistory",
                    name="trained_model_id",
                    field=models.BigIntegerField(),
                ),
                migrations.AlterField(
                    model_name="slothistory",
                    name="previous_model_id",
                    field=models.BigIntegerField(blank=True, null=True),
                ),
            ]
        ),
    ]

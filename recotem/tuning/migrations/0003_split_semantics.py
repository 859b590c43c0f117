"""Split configs speak the older Recotem's language (issue: "One room per concern", item 6).

Before: ``test_user_ratio`` (≤ 0.5) was the share of final-test users, validation used every other
user, and ``n_test_users`` fixed both the test and the validation count. Now ``test_user_ratio`` /
``n_test_users`` name the validation users, as in the older Recotem, and the new
``final_test_ratio`` / ``n_final_test_users`` the users kept out for the final test. The data
migration rewrites existing rows so every existing config splits exactly as it did.
"""

from django.db import migrations, models


def forwards(apps, schema_editor):
    SplitConfig = apps.get_model("tuning", "SplitConfig")
    for split in SplitConfig.objects.all():
        split.final_test_ratio = split.test_user_ratio
        split.n_final_test_users = split.n_test_users
        split.test_user_ratio = 1.0
        split.save(update_fields=["final_test_ratio", "n_final_test_users", "test_user_ratio"])


def backwards(apps, schema_editor):
    SplitConfig = apps.get_model("tuning", "SplitConfig")
    for split in SplitConfig.objects.all():
        split.test_user_ratio = min(split.final_test_ratio, 0.5) or 0.1
        split.n_test_users = split.n_final_test_users or split.n_test_users
        split.save(update_fields=["test_user_ratio", "n_test_users"])


class Migration(migrations.Migration):
    dependencies = [("tuning", "0002_parametertuningjob_finishing_and_more")]

    operations = [
        migrations.AddField(
            model_name="splitconfig",
            name="final_test_ratio",
            field=models.FloatField(default=0.1),
        ),
        migrations.AddField(
            model_name="splitconfig",
            name="n_final_test_users",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="splitconfig",
            name="test_user_ratio",
            field=models.FloatField(default=1.0),
        ),
        migrations.RunPython(forwards, backwards),
    ]

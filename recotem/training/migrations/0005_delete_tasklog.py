from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_tasklog"),
        ("training", "0004_modelconfiguration"),
    ]

    operations = [migrations.DeleteModel(name="TaskLog")]

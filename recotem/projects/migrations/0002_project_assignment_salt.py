# Sticky assignment (issue 12): a random salt per project. AddField evaluates a callable default
# once for every existing row, so the data migration then gives each project its own salt.

from typing import Any

from django.db import migrations, models

import recotem.projects.models


def fill_salts(apps: Any, schema_editor: Any) -> None:
    Project = apps.get_model("projects", "Project")
    for project in Project.objects.only("pk").iterator():
        Project.objects.filter(pk=project.pk).update(
            assignment_salt=recotem.projects.models.new_assignment_salt()
        )


class Migration(migrations.Migration):
    dependencies = [("projects", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="project",
            name="assignment_salt",
            field=models.CharField(
                default=recotem.projects.models.new_assignment_salt, editable=False, max_length=32
            ),
        ),
        migrations.RunPython(fill_salts, migrations.RunPython.noop),
    ]

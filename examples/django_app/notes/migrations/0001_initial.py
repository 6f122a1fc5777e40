"""The notes table (as ``makemigrations notes`` writes it)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    """Create the notes table."""

    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012  (Django reads these)

    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Note",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("worker", models.IntegerField()),
                ("written_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    ]

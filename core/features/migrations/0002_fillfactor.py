"""Leave room in each page so the per-batch updates of feature rows are HOT (heap-only: no index
insert, less WAL). PostgreSQL only."""

from django.db import migrations

TABLES = ("features_userfeatures", "features_itemfeatures", "features_itemneighbours")


def set_fillfactor(apps, schema_editor, value: int = 70) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {value})")


def reset_fillfactor(apps, schema_editor) -> None:
    set_fillfactor(apps, schema_editor, 100)


class Migration(migrations.Migration):
    dependencies = [("features", "0001_initial")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]

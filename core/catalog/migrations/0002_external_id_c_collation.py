# Hand-edited: PostgreSQL-only tuning, invisible to Django's model state. External ids are
# opaque and looked up in bulk by equality on every event batch: byte order ("C") makes each
# B-tree comparison a memcmp, and makes Django's extra varchar_pattern_ops index redundant (one
# index fewer to maintain when events auto-insert users and items).

from django.db import migrations


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in ("catalog_item", "catalog_user"):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s "
                "AND indexname LIKE %s",
                [table, f"{table}_external_id%like"],
            )
            for (name,) in cursor.fetchall():
                schema_editor.execute(f'DROP INDEX "{name}"')
        schema_editor.execute(
            f'ALTER TABLE {table} ALTER COLUMN external_id TYPE varchar(255) COLLATE "C"'
        )


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in ("catalog_item", "catalog_user"):
        schema_editor.execute(
            f'ALTER TABLE {table} ALTER COLUMN external_id TYPE varchar(255) COLLATE "default"'
        )
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_external_id_like ON {table} (external_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0001_initial'),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]

# Hand-edited: PostgreSQL-only, invisible to Django's model state. Keys arrive in received_at
# order, so a BRIN index serves the pruning (received_at < cutoff) at a fraction of a B-tree's
# cost per insert: one fewer B-tree to maintain for every event stored.

from django.db import migrations


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events_eventkey' "
            "AND indexdef LIKE '%%btree (received_at)'"
        )
        for (name,) in cursor.fetchall():
            schema_editor.execute(f'DROP INDEX "{name}"')
    schema_editor.execute(
        "CREATE INDEX events_eventkey_received_brin ON events_eventkey USING brin (received_at)"
    )


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS events_eventkey_received_brin")
    schema_editor.execute(
        "CREATE INDEX events_eventkey_received_at_btree ON events_eventkey (received_at)"
    )


class Migration(migrations.Migration):

    dependencies = [
        ("events", "0002_brin_timestamp_c_collation"),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]

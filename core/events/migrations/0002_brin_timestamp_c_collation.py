# Hand-edited: PostgreSQL-only tuning of the write path, invisible to Django's model state.

from django.db import migrations

POSTGRESQL_FORWARD = """
-- Time windows: BRIN costs a fraction of a B-tree per insert, and events arrive in time order.
CREATE INDEX events_event_ts_brin ON events_event USING brin (timestamp);
-- Idempotency keys are opaque: byte order ("C") makes every B-tree comparison a memcmp.
ALTER TABLE events_eventkey ALTER COLUMN event_id TYPE varchar(128) COLLATE "C";
"""

POSTGRESQL_BACKWARD = """
DROP INDEX IF EXISTS events_event_ts_brin;
ALTER TABLE events_eventkey ALTER COLUMN event_id TYPE varchar(128) COLLATE "default";
CREATE INDEX IF NOT EXISTS events_eventkey_event_id_like ON events_eventkey (event_id varchar_pattern_ops);
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(POSTGRESQL_FORWARD)
    # Django adds a varchar_pattern_ops index to a CharField primary key, for LIKE; keys are
    # never searched by prefix, and it would cost a second B-tree insert per event.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events_eventkey' "
            "AND indexname LIKE 'events_eventkey_event_id%like'"
        )
        for (name,) in cursor.fetchall():
            schema_editor.execute(f'DROP INDEX "{name}"')


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_BACKWARD)


class Migration(migrations.Migration):

    dependencies = [
        ('events', '0001_initial'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='event',
            name='events_event_ts_idx',
        ),
        migrations.RunPython(forward, backward),
    ]

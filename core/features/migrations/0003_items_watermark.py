"""The items consumer gets a watermark of its own (it was part of "activity"): it starts where
"activity" is, whose batches folded the item tables up to there. Its Redis keys are rebuilt by
its first run (no marker yet)."""

from django.db import migrations


def items_from_activity(apps, schema_editor):  # type: ignore[no-untyped-def]
    Watermark = apps.get_model("features", "Watermark")
    activity = Watermark.objects.filter(consumer="activity").first()
    if activity is None or Watermark.objects.filter(consumer="items").exists():
        return
    Watermark.objects.create(
        consumer="items",
        last_event_id=activity.last_event_id,
        gap_event_id=activity.gap_event_id,
        gap_seen_at=activity.gap_seen_at,
    )


def items_back_into_activity(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("features", "Watermark").objects.filter(consumer="items").delete()


class Migration(migrations.Migration):
    dependencies = [("features", "0002_fillfactor")]

    operations = [migrations.RunPython(items_from_activity, items_back_into_activity)]

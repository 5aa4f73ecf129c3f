from celery import shared_task

from .services import TrainingRefused, model_train


@shared_task(name="registry.train_model", soft_time_limit=50 * 60, time_limit=55 * 60)
def train_model_task() -> dict:
    """Scheduled (daily): train on stored events and export the next version. Safe to run twice:
    each run exports its own new version, written aside and renamed into place."""
    try:
        outcome = model_train()
    except TrainingRefused as exc:
        return {"trained": False, "reason": str(exc)}
    return {"trained": True, "version": outcome.version, "events": outcome.events}

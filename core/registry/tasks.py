from celery import shared_task

from .services import (
    TrainingRefused,
    experiments_guard,
    model_train,
    model_version_validate,
    registry_sweep,
)


@shared_task(name="registry.train_model", soft_time_limit=50 * 60, time_limit=55 * 60)
def train_model_task() -> dict:
    """Scheduled (daily): train on stored events and export the next version. Safe to run twice:
    each run exports its own new version, written aside and renamed into place."""
    try:
        outcome = model_train()
    except TrainingRefused as exc:
        return {"trained": False, "reason": str(exc)}
    return {"trained": True, "version": outcome.version, "events": outcome.events}


@shared_task(
    name="registry.validate_version",
    acks_late=True,
    soft_time_limit=25 * 60,
    time_limit=30 * 60,
)
def validate_version_task(version_id: int) -> dict:
    """A pushed archive: unpack, check, load, smoke-test, gate, place. Safe to run twice: only
    the run that claims the `uploaded` version works on it."""
    version = model_version_validate(version_id=version_id)
    return {"version_id": version_id, "status": version.status, "number": version.number}


@shared_task(name="registry.guard_experiments", soft_time_limit=120, time_limit=180)
def guard_experiments_task() -> list[str]:
    """Periodic: roll back a canary that keeps breaking a guardrail."""
    return experiments_guard()


@shared_task(name="registry.sweep", soft_time_limit=120, time_limit=180)
def registry_sweep_task() -> dict:
    """Periodic: fail versions whose validation was interrupted, remove orphaned uploads."""
    return registry_sweep()

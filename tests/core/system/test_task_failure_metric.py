from celery import shared_task
from prometheus_client import REGISTRY


@shared_task(name="tests.always_fails")
def always_fails() -> None:
    raise RuntimeError("this task fails on purpose")


def failures(task: str) -> float:
    value = REGISTRY.get_sample_value("recommender_celery_task_failures_total", {"task": task})
    return value or 0.0


def test_a_failed_task_is_counted_by_name():
    # given
    before = failures("tests.always_fails")

    # when
    result = always_fails.apply()

    # then
    assert result.failed()
    assert failures("tests.always_fails") == before + 1

"""The fault suite of `make chaos`, shorter (each fault held 4 s), on a private real stack: its
own PostgreSQL cluster, cache and broker Redis servers, model server, gunicorn, Celery worker
and beat. Never the shared services the rest of the suite uses. About two to three minutes."""

import glob
import shutil

import pytest

from core.system.resilience import chaos

pytestmark = pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"),
    reason="needs PostgreSQL's server binaries (initdb, pg_ctl) to make a private cluster",
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server to start private Redis servers")
    logs = tmp_path_factory.mktemp("chaos-logs")
    results, context = chaos.run(hold=4.0, keep_logs=logs)
    chaos.print_table(results, context)  # shown by pytest when a test fails
    return {result.fault: result for result in results}, context, logs


@pytest.mark.parametrize("fault", list(chaos.FAULTS))
def test_fault_loses_no_event_answers_honestly_and_recovers(suite, fault):
    results, _, logs = suite
    result = results[fault]
    if result.skipped:
        assert fault == "model-disk", result.skipped  # the only fault that needs a mount
        pytest.skip(result.skipped)

    assert result.requests > 0 and result.events_accepted > 0, "the load did not run"
    assert result.events_lost == 0, f"{result.events_lost} accepted events are not stored"
    assert result.disallowed_server_errors == 0, (
        f"5xx where an answer was possible: {result.statuses} (logs in {logs})"
    )
    assert result.recovered, f"{fault} did not recover: {result.notes} (logs in {logs})"


def test_model_server_down_is_answered_from_fallbacks(suite):
    results, _, _ = suite
    sources = results["model-server"].sources
    assert any(source.startswith("fallback:") for source in sources), sources


def test_no_server_error_between_faults(suite):
    _, context, _ = suite
    assert context["server_errors_between_faults"] == 0

"""The web server's command line (core/system/webserver.py), which the demo, the resilience stack,
the benchmarks, the Dockerfile and docker-compose.yml share."""

import argparse

import pytest

from core.system import webserver


def test_the_command_serves_the_wsgi_app_with_the_asked_workers_and_threads():
    command = webserver.command(port=8123, workers=3, threads=2, python="/py")

    assert command[:3] == ["/py", "-m", "granian"]
    assert command[-1] == "recommender.wsgi:application"
    assert {"--interface=wsgi", "--port=8123", "--workers=3", "--blocking-threads=2"} <= set(
        command
    )
    assert "--no-access-log" in command
    assert "--access-log" in webserver.command(port=1, access_log=True)


@pytest.mark.parametrize(("workers", "threads"), [(0, 1), (1, 0), (-2, 4)])
def test_no_command_without_a_worker_and_a_thread(workers, threads):
    with pytest.raises(ValueError, match="at least 1"):
        webserver.command(port=8000, workers=workers, threads=threads)


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_a_count_option_refuses_what_is_not_a_whole_number_from_one(text):
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        webserver.count(text)
    assert webserver.count("4") == 4

# The application image for web, worker, beat and migrate (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
RUN pip install -r requirements.lock
COPY . .
RUN pip install --no-deps -e . \
    && DJANGO_SECRET_KEY=build-only-collectstatic-key-0123456789abcdef \
       RECOMMENDER_VAR_DIR=/tmp/build python manage.py collectstatic --noinput \
    && useradd --system --create-home app && mkdir -p /var/lib/recommender /models \
    && chown app /var/lib/recommender /models
USER app
EXPOSE 8000
# The flags of core/system/webserver.py (tests/test_deployment_files.py holds them equal).
CMD ["granian", "--interface=wsgi", "--host=0.0.0.0", "--port=8000", "--workers=2", \
     "--blocking-threads=4", "--no-ws", "--respawn-failed-workers", "--log-level=warning", \
     "--no-access-log", "recommender.wsgi:application"]

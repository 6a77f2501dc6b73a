# RapidValue production image: gunicorn serving rapidvalue.wsgi (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=rapidvalue.settings \
    RAPIDVALUE_DEBUG=0

WORKDIR /app

# Dependencies first, so code changes don't reinstall them (psycopg[binary] needs no system libs).
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN groupadd --system --gid 10001 rapidvalue \
    && useradd --system --uid 10001 --gid rapidvalue --home-dir /app --shell /usr/sbin/nologin rapidvalue

COPY --chown=rapidvalue:rapidvalue . .

USER rapidvalue

# Static files are collected at build time; settings only need a (dummy) SECRET_KEY for that.
RUN SECRET_KEY=build-time-dummy-not-used-at-runtime \
    DATABASE_URL=postgres://build:build@127.0.0.1:5432/build \
    REDIS_URL=redis://127.0.0.1:6379/0 \
    python manage.py collectstatic --noinput

EXPOSE 8000

CMD ["gunicorn", "rapidvalue.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "4", \
     "--worker-class", "gthread", "--threads", "16", "--timeout", "60", "--access-logfile", "-"]

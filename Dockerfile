# DACC's production image: the web server by default; the scheduler and the MQTT
# worker run the same image with another command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLASK_APP=dacc

WORKDIR /app
COPY . .
# Editable: the app reads its migrations from /app/migrations. The code stays root's
# and read-only; the server runs as an unprivileged user. Only instance/ (the embedded
# database, used when no DATABASE_URL is given) is writable.
RUN pip install -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dacc \
    && mkdir -p instance && chown dacc:dacc instance
USER dacc

EXPOSE 5000
CMD ["scripts/docker-web.sh"]

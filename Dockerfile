# One image for every Recotem process; the command picks the role (see compose.yaml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 RECOTEM_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recotem ./recotem
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home recotem \
    && mkdir -p /data && chown recotem:recotem /data && chmod 0700 /data
# Never root: a compromised process must not own the image or the host's mounted volumes.
USER recotem:recotem
VOLUME /data
EXPOSE 8000
CMD ["recotem", "web", "--host", "0.0.0.0", "--port", "8000", "--migrate"]

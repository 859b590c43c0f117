# One image for every Recotem process; the command picks the role (see compose.yaml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 RECOTEM_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recotem ./recotem
RUN pip install .
VOLUME /data
EXPOSE 8000
CMD ["recotem", "web", "--host", "0.0.0.0", "--port", "8000", "--migrate"]

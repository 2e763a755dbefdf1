# spine-imaging CDS: the service image (also used by the compose seeder).
# Publish it only behind a buffering reverse proxy: gunicorn gives a thread to each connection
# that has started a request, so a few dozen slow clients stall it. docker-compose.yml runs
# nginx with deploy/nginx/ in front; the service's port is not published there.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY mappings ./mappings
COPY fixtures ./fixtures
COPY docs ./docs
RUN pip install --no-cache-dir . && useradd --create-home cds && mkdir -p /app/var && chown cds /app/var
USER cds
ENV CDS_MAPPINGS_DIR=/app/mappings \
    CDS_FEEDBACK_DB=/app/var/cds-feedback.sqlite3
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=2).status == 200 else 1)"
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8765"]

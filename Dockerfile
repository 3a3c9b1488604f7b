# tickcast service image: ONNX Runtime serving, no TensorFlow (the [train] extra is not installed).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md constraints.txt ./
COPY stream ./stream
COPY models ./models
COPY bench ./bench
COPY tools ./tools
COPY config.toml ./
RUN pip install -c constraints.txt '.[registry]' && useradd --system --uid 10001 tickcast
USER tickcast

# Metrics must listen beyond loopback inside a container; compose maps the port.
ENV TICKCAST_METRICS__HOST=0.0.0.0
EXPOSE 9400
# The probe asks the port the service listens on: TICKCAST_METRICS__PORT when set (compose, k8s),
# else the settings' default.
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import os,sys,urllib.request; port = os.environ.get('TICKCAST_METRICS__PORT') or '9400'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["tickcast"]
CMD ["run"]

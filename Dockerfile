# The gtsr HTTP API (`gtsr serve`) on the light install: the shipped ONNX models, the API and the app; no torch,
# fastai, pandas or JupyterLab. Build: docker build -t gtsr .   Run: docker run -p 8000:8000 gtsr
# (compose.yaml runs the API and the app together). The versions are the tested set, constraints.txt.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from (the wheel carries the models and the app page); .dockerignore keeps the rest out.
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY gtsr ./gtsr
RUN pip install --no-cache-dir -c constraints.txt . \
    && groupadd --gid 10001 gtsr \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin gtsr

# Not root: the API needs no privilege, only its port (the app page writes Jupyter's runtime files under $HOME).
USER 10001:10001
WORKDIR /home/gtsr
EXPOSE 8000

# slim has no curl: the check is Python's own HTTP client. It fails unless /health answers 200 within 5 s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5).status != 200)"]

# 0.0.0.0 inside the container, so that a published port reaches it; one worker (scale with replicas, and /metrics
# then counts the whole process). docker stop sends SIGTERM, which uvicorn answers by finishing in-flight requests.
CMD ["gtsr", "serve", "--host", "0.0.0.0", "--port", "8000"]

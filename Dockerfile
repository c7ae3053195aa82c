# Optional container: the same single process `make run` starts (API + dashboard + scheduler).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CSH_DATA_DIR=/data CSH_HOST=0.0.0.0 PORT=5006 \
    BOKEH_ALLOW_WS_ORIGIN=localhost:5006,127.0.0.1:5006
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY panel_serve.py ./
RUN pip install --no-cache-dir .
VOLUME ["/data"]
EXPOSE 5006
# Builds the demo snapshot on first start when /data holds none, then serves.
CMD ["python", "panel_serve.py"]

# The central server as a container image. NOT TESTED on the development machine (it has no
# Docker engine); see README "What is not verified here".
FROM python:3.13-slim AS build
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY proto proto
COPY server server
COPY gateway/pyproject.toml gateway/pyproject.toml
RUN mkdir -p gateway/src/navign_gateway && touch gateway/src/navign_gateway/__init__.py \
 && UV_PROJECT_ENVIRONMENT=/opt/navign uv sync --frozen --no-dev --package navign-server

FROM python:3.13-slim
RUN useradd --system --home /var/lib/navign-server navign \
 && mkdir -p /var/lib/navign-server && chown navign /var/lib/navign-server
COPY --from=build /opt/navign /opt/navign
COPY --from=build /src/proto /src/proto
COPY --from=build /src/server /src/server
ENV PATH=/opt/navign/bin:$PATH \
    NAVIGN_SERVER_DATA_DIR=/var/lib/navign-server \
    NAVIGN_SERVER_HOST=0.0.0.0
USER navign
WORKDIR /var/lib/navign-server
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["navign-server"]
CMD ["serve"]

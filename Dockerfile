# Multi-stage: build a wheel with the compilers, run it on a slim image as a non-root user.
# Python is never run with -O: the code states its invariants with assert.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY switch ./switch
COPY settlement ./settlement
COPY simulator ./simulator
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/loyalty --create-home loyalty \
    && install -d -o loyalty -g loyalty -m 0700 /var/lib/loyalty/keys
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER loyalty
WORKDIR /var/lib/loyalty
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOYALTY_LISTEN_HOST=0.0.0.0 \
    LOYALTY_METRICS_HOST=0.0.0.0 \
    LOYALTY_KEY_FILE=/var/lib/loyalty/keys/keys.json
EXPOSE 8583 9583
ENTRYPOINT ["loyalty"]
CMD ["run"]

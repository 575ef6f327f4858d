FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 8000 8900
CMD ["dispatcher", "serve", "--host", "0.0.0.0", "--port", "8000"]

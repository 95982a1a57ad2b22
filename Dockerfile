# CPU image by default; for NVIDIA GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models TIKTOKEN_CACHE_DIR=/opt/tiktoken
WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
# The torch pin as a constraint keeps pip from swapping the build above for another one.
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt && pip install -c /tmp/constraints.txt . \
 && python -c "import tiktoken; tiktoken.get_encoding('cl100k_base')"
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready').status != 200)"
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]

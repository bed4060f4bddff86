# KServe's model server with the attention core (kserve_engine): a custom KServe predictor, no
# TorchServe, no Java. The model (a .mar from `make archive`) comes from the InferenceService's
# storage URI, which KServe's storage initializer puts in /mnt/models.
#   docker build -t vitscope-kserve .                                                   # CPU
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t vitscope-kserve:gpu .
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY requirements-core.txt requirements-kserve.txt ./
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r requirements-core.txt -r requirements-kserve.txt
COPY vitscope/ vitscope/
COPY kserve_engine/ kserve_engine/
USER 1000
EXPOSE 8080
# tests/test_kserve_engine.py runs this same entry point and arguments outside a container.
ENTRYPOINT ["python", "-m", "kserve_engine"]
CMD ["--model_dir", "/mnt/models", "--host", "0.0.0.0", "--http_port", "8080"]

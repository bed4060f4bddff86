#!/usr/bin/env bash
# The GPU figures of bench/results/gpu.md, as run on a lent GPU machine (its own python3 with torch):
#   bench/gpu.sh OUT_DIR
# 1. the forward passes (fp32/bf16/fp16, up to 1080x1920), the methods and batching on the GPU;
# 2. torch.compile vs eager on the GPU (bf16);
# 3. where the host CPU has AMX: fp32 vs bf16 and torch.compile on 2 of its cores, as on our 2-core machines.
# Each step has its own time limit, so a slow one leaves the others' results.
set -u
out=${1:?usage: bench/gpu.sh OUT_DIR}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep -E '^Model name|^CPU\(s\)'
flags=$(grep -o -w -E 'amx_bf16|amx_fp16|avx512_bf16|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "host CPU flags: ${flags:-none of avx512f/avx512_bf16/amx}"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
timeout 270 python3 -m bench --device cuda --sections forward methods batching --out "$out" --name gpu >"$out/gpu.log" 2>&1
echo "gpu bench: exit $?"; tail -n 45 "$out/gpu.md" 2>/dev/null || tail -n 20 "$out/gpu.log"
timeout 110 python3 -m bench.compiled --model dino_vits8 --device cuda --precision bf16 --repeats 10 >"$out/compile_gpu.json" 2>"$out/compile_gpu.log"
echo "compile gpu: exit $?"; cat "$out/compile_gpu.json"
if [[ $flags == *amx_bf16* ]]; then
  export OMP_NUM_THREADS=2  # torch on 2 threads; the bench pins them to 2 cores (compile workers may use the rest)
  timeout 90 taskset -c 0,1 python3 -m bench --device cpu --sections forward --sizes 480x480 --paths fp32 bf16 --out "$out" --name amx >"$out/amx.log" 2>&1
  echo "amx bench: exit $?"; tail -n 20 "$out/amx.md" 2>/dev/null || tail -n 20 "$out/amx.log"
  timeout 100 python3 -m bench.compiled --model dino_vits8 --device cpu --precision bf16 --mode freezing >"$out/compile_amx.json" 2>"$out/compile_amx.log"
  echo "compile amx: exit $?"; cat "$out/compile_amx.json"
fi

# vllm 0.15.1 + torch 2.9.1 (CUDA 12.8 build): what tools/gpu_bundle/build.sh bundles.
# The same pins, drops and host links as ../shared/gpu/build_bundle.sh (proven on an H100
# on 2026-11-26); sourced by build.sh, which documents every variable.
VLLM_VER=0.15.1
VLLM_WHEEL_NAME=vllm-0.15.1-cp38-abi3-manylinux_2_31_x86_64.whl
TORCH_VER=2.9.1
TRITON_VER=3.5.1
TORCHVISION_VER=0.24.1   # vllm pins it; the host's torchvision is built for torch 2.11
DEPS_CUTOFF_DEFAULT=2026-02-05T00:00:00Z   # the day after vllm 0.15.1 was built
PLATFORMS="manylinux_2_31_x86_64 manylinux_2_30_x86_64 manylinux_2_29_x86_64 manylinux_2_28_x86_64
 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_25_x86_64 manylinux_2_24_x86_64
 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64
 manylinux_2_5_x86_64 manylinux1_x86_64"
# vllm 0.15.1 needs transformers < 5: the bundle shadows the host's 5.x and its hub/tokenizers.
SEEDS=('transformers>=4.57,<4.58' 'huggingface-hub<1.0')
LATEST='transformers tokenizers huggingface-hub'
HOST_PKGS="torch torchvision torchaudio triton numpy safetensors sentencepiece tiktoken einops
 psutil regex requests aiohttp pillow opencv-python-headless prometheus-client protobuf pyyaml
 cloudpickle filelock tqdm grpcio numba llvmlite py-cpuinfo rich typer click jinja2 uvloop httpx
 anyio h11 xxhash msgpack cuda-bindings cuda-pathfinder
 typing-extensions sympy mpmath networkx markupsafe fsspec packaging
 certifi charset-normalizer idna urllib3
 aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl
 httpcore markdown-it-py mdurl pygments shellingham"
HOST_VERSIONS_FILE=   # 0.15.1 was proven without a version check of the host's packages
HOST_KEEP=
SKIP_RE='torch.* triton.* ray flashinfer.* nvidia-.* cuda-.* cupy.*'
# Files of the vllm wheel left out: FA2 (Hopper runs FA3), FlashMLA (MLA models only).
VLLM_DROP=(vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_flashmla_C.abi3.so
           vllm/_flashmla_extension_C.abi3.so)
# CUDA libraries carried, as "pip-name folder-under-site/nvidia" (versions: torch's pins).
# Those whose soname the host's CUDA 13 packages lack:
CUDA_CARRY="nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-cufft-cu12 nvidia-cuda-nvrtc-cu12
 nvidia-nvjitlink-cu12 nvidia-cuda-cupti-cu12"
# Reused from the host: "soname  host-links.txt line" (install.sh makes the link).
HOST_LIBS=(
  "libcudnn.so.9        cudnn dir cudnn"
  "libnccl.so.2         nccl dir nccl"
  "libcusparseLt.so.0   cusparselt dir cusparselt"
  "libnvshmem_host.so.3 nvshmem dir nvshmem"
  "libcurand.so.10      curand files cu13/lib/libcurand.so.10"
  "libcufile.so.0       cufile files cu13/lib/libcufile.so.0 cu13/lib/libcufile_rdma.so.1"
  "libcusparse.so.12    cusparse files cu13/lib/libcusparse.so.12 cu13/lib/libnvJitLink.so.13"
  # cudnn-cu13's libraries look for CUDA 13 cuBLAS/NVRTC in $ORIGIN/../../cu13/lib
  "-                    cu13 dir cu13"
)
# libtorch_cuda_linalg.so needs libcusolver.so.11 (CUDA 12), which neither side has: left
# out, so CUDA torch.linalg decompositions fail; matmuls and norms are not affected.
TORCH_DROP=('torch/bin/protoc*' 'torch/lib/libtorch_cuda_linalg.so')
STRIP_DEBUG=()   # the shared bundle shipped its libraries as the wheels have them
# FULL_CUDA=1: carry every CUDA 12 library torch pins and link nothing from the host.
FULL_CUDA_CARRY="nvidia-cudnn-cu12 nvidia-nccl-cu12 nvidia-cusparselt-cu12 nvidia-nvshmem-cu12
 nvidia-curand-cu12 nvidia-cufile-cu12 nvidia-cusparse-cu12 nvidia-cusolver-cu12 nvidia-nvtx-cu12"
FULL_CUDA_TORCH_DROP=('torch/bin/protoc*')
# install.sh's self-check imports these and calls torch.ops._C.fused_add_rms_norm.
CHECK_MODULES="vllm._C vllm._moe_C vllm.cumem_allocator vllm.vllm_flash_attn._vllm_fa3_C"
ENV_EXTRA=""
FULL_CUDA_ENV_EXTRA=""

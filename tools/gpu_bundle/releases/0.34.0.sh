# vllm 0.34.0 + torch 2.14.0 (PyPI's torch 2.14.0 is the CUDA 13.0 build, +cu130): what
# tools/gpu_bundle/build.sh bundles. Sourced by build.sh, which documents every variable;
# the README section "GPU bundles" says why each choice was made.
VLLM_VER=0.34.0
VLLM_WHEEL_NAME=vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl
TORCH_VER=2.14.0         # vllm 0.34.0: torch==2.14.0
TRITON_VER=3.8.0         # torch 2.14.0: triton~=3.8.0 (3.8.0 is the only 3.8.x)
TORCHVISION_VER=0.29.0   # vllm pins it; the host's 0.26 is built for torch 2.11
DEPS_CUTOFF_DEFAULT=2026-11-17T00:00:00Z   # the day after vllm 0.34.0's wheel was built
# Every manylinux tag up to glibc 2.31 (the host ran vllm 0.15.1's manylinux_2_31 wheel);
# nvidia-nccl-cu13 is only tagged manylinux_2_18.
PLATFORMS="manylinux_2_31_x86_64 manylinux_2_30_x86_64 manylinux_2_29_x86_64 manylinux_2_28_x86_64
 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_25_x86_64 manylinux_2_24_x86_64
 manylinux_2_23_x86_64 manylinux_2_22_x86_64 manylinux_2_21_x86_64 manylinux_2_20_x86_64
 manylinux_2_19_x86_64 manylinux_2_18_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64"
# vllm 0.34.0 wants transformers>=5.16.1,<5.23, huggingface_hub>=2.0 and tokenizers>=0.23.3;
# the host has 5.17.0 (which needs hub<2.0), hub 1.33.0 and tokenizers 0.23.2: all three are
# carried (the resolver takes the newest that fit, before the cutoff).
SEEDS=()
LATEST=''
# The host's packages left to it (see host-versions.txt for the versions known there; one
# whose known version misses a requirement is carried instead). Not here, so carried:
# transformers, tokenizers, huggingface-hub (above), setuptools (vllm: <81; the plugin's
# build needs >=77), certifi (vllm: >=2026.10.19, newer than the host image).
HOST_PKGS="torch torchvision torchaudio triton numpy safetensors sentencepiece tiktoken einops
 psutil regex requests aiohttp pillow opencv-python-headless prometheus-client protobuf pyyaml
 cloudpickle filelock tqdm grpcio py-cpuinfo rich typer click jinja2 uvloop httpx
 anyio h11 xxhash msgpack cuda-bindings cuda-pathfinder cuda-toolkit ninja six hf-xet
 typing-extensions sympy mpmath networkx markupsafe fsspec packaging
 charset-normalizer idna urllib3 pyarrow pandas scipy
 aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl
 httpcore markdown-it-py mdurl pygments shellingham"
HOST_VERSIONS_FILE=host-versions.txt
# Never carried although a requirement misses the host's version: mistral-common 1.13 asks
# for numpy<2.4 (host 2.5.2), but a bundled older numpy would shadow the one the host's
# compiled packages (pyarrow, pandas, opencv, ...) were built against.
HOST_KEEP=numpy
# Requirements of vllm 0.34.0 deliberately not bundled (a text MoE model on one Hopper GPU
# does not import them; what stops working is in the README):
#  torch/triton/torchvision: added explicitly below; torchaudio, torchcodec, pynvvideocodec:
#  audio/video inputs; flashinfer-*: Hopper attention is FA3, sampling falls back to PyTorch;
#  tilelang, nvidia-cutlass-dsl*, quack-kernels, tokenspeed-mla,
#  humming-kernels, nvidia-cudnn-frontend: kernels of other GPUs / quantised or MLA / DSA
#  models; fastsafetensors, instanttensor: optional weight loaders; numba: Kimi vision only
#  (the host's numba stays visible); nvidia-*, cuda-*: the CUDA libraries, handled below.
SKIP_RE='torch torchaudio torchcodec torchvision triton pynvvideocodec ray flashinfer.*
 tilelang nvidia-cutlass-dsl.* quack-kernels tokenspeed-mla humming-kernels.*
 fastsafetensors instanttensor numba llvmlite nvidia-.* cuda-.* cupy.*'
# Files of the vllm wheel left out (about 245 MB): FA2 (Hopper runs FA3; ALiBi models fall
# back to Triton attention), the Rust front end vllm-rs (opt-in: VLLM_USE_RUST_FRONTEND),
# FlashMLA / DeepSelect / FlashKDA (MLA, sparse-indexer and Kimi-delta-attention models),
# DeepGEMM (FP8 block GEMMs) and fmha_sm100 (Blackwell).
VLLM_DROP=(vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/vllm-rs vllm/_flashmla_C.abi3.so
           vllm/_flashmla_extension_C.abi3.so vllm/_deepselect_C.abi3.so vllm/_flashkda_C.abi3.so
           vllm/third_party/deep_gemm/ vllm/third_party/fmha_sm100/)
# CUDA 13 libraries carried (versions: torch 2.14.0's pins): NCCL, because torch 2.14.0's
# libtorch_cuda.so imports 11 functions (ncclCommResume, ncclCommGrow, ...) that the host's
# NCCL 2.28.9 lacks, and `import torch` fails on them (tried: "undefined symbol").
CUDA_CARRY="nvidia-nccl-cu13"
# Reused from the host's CUDA 13 packages (torch 2.11.0's pins; same sonames; every function
# torch 2.14.0 and vllm import from them is exported there, checked with nm -D):
#   "sonames,comma,separated  host-links.txt line"
# cuBLAS 13.1.0.3 there (13.1.1.3 pinned), cuSPARSELt 0.8.0 (0.8.1); the rest are the same
# versions (cuda-toolkit 13.0.2 vs 13.0.3 differ only in cuBLAS). cuDNN 9.19 there vs 9.24
# built against: torch refuses a runtime cuDNN older than its build's unless
# PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK=1, which env.sh sets (ENV_EXTRA); only convolutions,
# RNNs and cuDNN attention would run on it, none of which a text MoE model uses.
HOST_LIBS=(
  "libcudart.so.13,libcublas.so.13,libcublasLt.so.13,libcufft.so.12,libcufile.so.0,libcupti.so.13,libcurand.so.10,libcusolver.so.12,libcusparse.so.12,libnvJitLink.so.13,libnvrtc.so.13 cu13 dir cu13"
  "libcudnn.so.9         cudnn dir cudnn"
  "libcusparseLt.so.0    cusparselt dir cusparselt"
  "libnvshmem_host.so.3  nvshmem dir nvshmem"
)
TORCH_DROP=('torch/bin/protoc*')
# Debug information (DWARF) stripped from these (paths under site/; strip --strip-debug keeps
# code, dynamic symbols and the symbol table): about 320 MB that nothing reads at run time.
STRIP_DEBUG=(triton/_C/libtriton.so triton/_C/libproton.so nvidia/nccl/lib/libnccl.so.2)
# FULL_CUDA=1: also carry cuDNN 9.24 and cuSPARSELt 0.8.1 (the host has 9.19 and 0.8.0) and
# link only nvidia/cu13 and nvidia/nvshmem; env.sh then skips no cuDNN check.
FULL_CUDA_CARRY="nvidia-nccl-cu13 nvidia-cudnn-cu13 nvidia-cusparselt-cu13"
FULL_CUDA_TORCH_DROP=('torch/bin/protoc*')
CHECK_MODULES="vllm._C_stable_libtorch vllm._moe_C_stable_libtorch vllm.cumem_allocator vllm.vllm_flash_attn._vllm_fa3_C"
ENV_EXTRA="export PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK=\${PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK:-1}"
FULL_CUDA_ENV_EXTRA=""

// The CUDA C++ engine's pairwise_engine_cuda.cu compiled as host C++ against the CPU emulation of the
// CUDA execution model (setup.py force-includes cuda_emu.h and defines CK_CUDA_EMULATE):
// the very same kernel source, executed by ck_emu::launch. A test build, never a GPU's.
#include "../cuda/pairwise_engine_cuda.cu"

// The CUDA C++ engine's Python bindings (csrc/cuda/bindings.cpp) for the emulation build:
// the same argument checks, on CPU tensors (platform.h).
#include "../cuda/bindings.cpp"

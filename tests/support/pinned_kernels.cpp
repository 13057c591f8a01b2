// Linked into every test binary that asserts byte counts, so that they hold on any x86-64 CPU.
//
// How many bytes a training step allocates depends on the kernels LibTorch picks: oneDNN chooses
// its convolution implementation, and with it the size of its reorders and scratchpad, by the
// CPU's instruction set (an AVX-512 machine allocated 3 MiB more than an AVX2 one in the tiny
// VNet), and kernels split work, and per-thread buffers, by the thread count. Pinning both before
// any kernel runs makes every machine run the same kernels: oneDNN's SSE4.1 ones (every x86-64 CPU
// since 2008 has SSE4.1), on one thread. ATen's own kernels allocate the same bytes whatever their
// vector width. Child processes (the main job the compare tests start) inherit the pinning.
#include <ATen/Parallel.h>

#include <cstdlib>

namespace {

const bool kKernelsPinned = [] {
  setenv("ONEDNN_MAX_CPU_ISA", "SSE41", /*overwrite=*/1);  // read at oneDNN's first use
  setenv("OMP_NUM_THREADS", "1", /*overwrite=*/1);
  at::set_num_threads(1);
  return true;
}();

}  // namespace

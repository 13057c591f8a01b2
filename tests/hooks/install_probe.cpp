// A program that calls actmem::install() inside a try, as a LibTorch program would, and says how
// it went; the DeviceInstall tests run it under various environments.
//
//   install_probe [--cuda-tensor-first]
//     prints "installed: cpu|cuda" and exits 0, or "caught: <what()>" and exits 3 (then checks
//     that nothing was installed and that a CPU tensor still works).
//     --cuda-tensor-first: makes a CUDA tensor before install(), as a program that installs too
//     late does.
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <exception>

#include "hooks/actmem.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--cuda-tensor-first") == 0) {
    const torch::Tensor early = torch::ones({16}, torch::kCUDA);
    std::printf("made a CUDA tensor first: %f\n", early.sum().item<double>());
  }
  try {
    actmem::install();
  } catch (const std::exception& error) {
    std::printf("caught: %s\n", error.what());
    const bool untouched = !actmem::installed() && torch::ones({4}).sum().item<double>() == 4.0;
    std::printf("after the error: %s\n", untouched ? "nothing installed, torch works" : "BROKEN");
    return untouched ? 3 : 1;
  }
  std::printf("installed: %s\n",
              actmem::managed_device() == c10::DeviceType::CUDA ? "cuda" : "cpu");
  return 0;
}

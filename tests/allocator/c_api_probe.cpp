// A program that links libactmem_alloc.so and makes a few allocations: the CApiProcess tests run
// it with various environments.
#include <cstdio>

#include "allocator/actmem_alloc.h"

int main() {
  std::puts("probe ran");
  void* a = actmem_malloc(1000, 0, nullptr);
  void* b = actmem_malloc(1000, 0, nullptr);
  void* c = actmem_malloc(1000, 0, nullptr);
  actmem_free(b, 1000, 0, nullptr);
  return a != nullptr && c != nullptr ? 0 : 1;
}

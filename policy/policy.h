// What a policy decides, and about what: the interface between the hooks (which see every tensor
// autograd saves) and the policies (which choose what happens to it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace actmem {

enum class Action { kKeep, kOffload, kRecompute };

const char* to_string(Action action);

// A tensor autograd is about to save, as the hooks see it at pack time.
struct SavedTensorInfo {
  std::int64_t bytes = 0;      // bytes of the data the saved tensor refers to
  std::string segment;         // the enclosing segment's name, "" outside any segment
  std::vector<std::int64_t> shape;
  std::string dtype;
  std::int64_t order = 0;      // pack order within the step, from 0
  bool is_leaf = false;        // parameters, buffers, inputs: held outside autograd anyway
};

// Decides, per saved tensor, Keep, Offload or Recompute. Called on the thread that runs the
// forward op, possibly from several threads at once: implementations must be thread-safe.
// The hooks enforce the rules a policy cannot break: leaves are always kept, Recompute outside a
// segment means Keep, and Offload below the minimum size means Keep.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  virtual Action decide(const SavedTensorInfo& tensor) = 0;
};

// The fixed policies: "keep" (everything stays), "recompute" (every segment is recomputed),
// "offload" (every eligible tensor goes to host memory). Throws std::invalid_argument for any
// other name, listing the valid ones; "auto" is named as not yet available.
std::unique_ptr<Policy> make_policy(const std::string& name);

}  // namespace actmem

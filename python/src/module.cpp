// actmem._C: the Python package's C++ half. It reuses hooks/ and policy/ as the C++ library does;
// only the route into autograd differs (PyTorch's default saved-tensor hooks instead of an engine
// of actmem's, see saved_tensor_packing.h).
#include <torch/csrc/utils/pybind.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "allocator/config.h"
#include "allocator/process_allocators.h"
#include "hooks/activation_scope.h"
#include "hooks/install.h"
#include "policy/policy_config.h"
#include "python/src/python_errors.h"
#include "python/src/python_segment.h"
#include "python/src/saved_tensor_packing.h"

namespace py = pybind11;

namespace actmem::python {
namespace {

// The scope enable() made, active on the thread that made it; never destroyed at exit (its
// thread-local state may be gone by then, and autograd may still hold what it packed).
ActivationScope* g_scope = nullptr;
std::thread::id g_scope_thread;
bool g_budget_given = false;  // enable() set the budget: disable() puts the environment's back
bool g_policy_recomputes = false;  // the scope's policy may rerun segments (Policy::may_recompute)

using Overrides = std::map<std::string, std::string>;

void enable(const Overrides& overrides) {
  if (g_scope != nullptr) {
    throw std::logic_error("actmem: enable() was called already; call disable() first");
  }
  for (const auto& [name, value] : overrides) {
    if (name != "ACTMEM_POLICY" && name != "ACTMEM_BUDGET" && name != "ACTMEM_HOST_BUDGET" &&
        name != "ACTMEM_LOG" && name != "ACTMEM_OFFLOAD_MIN_BYTES" &&
        name != "ACTMEM_PREFETCH_WINDOW") {
      throw std::invalid_argument("actmem: enable() cannot set " + name);
    }
  }
  const auto getenv = [&overrides](const char* name) -> const char* {
    const auto found = overrides.find(name);
    return found != overrides.end() ? found->second.c_str() : std::getenv(name);
  };
  // Everything is read and checked before anything is installed.
  const PolicyConfig config = PolicyConfig::from_environment(getenv);
  std::optional<std::size_t> budget;
  if (const auto found = overrides.find("ACTMEM_BUDGET"); found != overrides.end()) {
    budget = alloc::parse_bytes(found->second, "ACTMEM_BUDGET");
  }
  alloc::ProcessAllocators& allocators = alloc::ProcessAllocators::instance();  // ACTMEM_BUDGET...
  managed_device();  // installs the allocator
  // Every device's: a DDP rank picks its GPU after this (Note [The device a scope serves]).
  if (budget) allocators.set_budget(budget);
  g_budget_given = budget.has_value();
  std::shared_ptr<Policy> policy = make_device_policy(config);
  g_policy_recomputes = policy->may_recompute();
  g_scope = new ActivationScope(std::move(policy), ScopeOptions::from(config));
  g_scope_thread = std::this_thread::get_id();
  alloc::ProcessAllocators::instance().set_stats_section(
      "activations", [source = g_scope->stats_source()] { return to_json(source()); });
}

void disable() {
  if (g_scope == nullptr) return;
  if (std::this_thread::get_id() != g_scope_thread) {
    throw std::logic_error("actmem: disable() must be called on the thread that called enable()");
  }
  // The statistics stay readable as they were; the scope's state (its host pool) goes.
  const std::string snapshot = to_json(g_scope->stats());
  alloc::ProcessAllocators::instance().set_stats_section("activations",
                                                          [snapshot] { return snapshot; });
  delete g_scope;
  g_scope = nullptr;
  if (g_budget_given) {
    alloc::ProcessAllocators& allocators = alloc::ProcessAllocators::instance();
    allocators.set_budget(allocators.config().allocator.budget_bytes);
    g_budget_given = false;
  }
}

std::string device_name() {
  return managed_device() == c10::DeviceType::CUDA ? "cuda" : "cpu";
}

}  // namespace
}  // namespace actmem::python

PYBIND11_MODULE(_C, m) {
  using namespace actmem::python;
  m.doc() = "actmem's C++ half: hooks, segments and policies for PyTorch's autograd";
  register_errors(m);
  m.def(
      "make_hooks",
      [m]() {
        return py::make_tuple(py::reinterpret_steal<py::object>(make_pack_function(m.ptr())),
                              py::reinterpret_steal<py::object>(make_unpack_function(m.ptr())));
      },
      "(pack, unpack): new function objects of actmem's pack and unpack hooks, for "
      "torch.autograd.graph.saved_tensors_hooks; their own objects, so that whoever holds one "
      "can be waited for (actmem.__init__'s exit handler).");
  m.def("enable", &enable, py::arg("overrides"),
        "Installs actmem's allocator (if not yet) and makes a scope with the policy the "
        "environment names, with `overrides` (ACTMEM_* name -> value) taking precedence, active "
        "on this thread. Raises ValueError naming a malformed variable.");
  m.def("disable", &disable, "Ends the scope enable() made (on the thread that made it).");
  m.def("enabled", [] { return g_scope != nullptr; });
  m.def("recomputes", [] { return g_scope != nullptr && g_policy_recomputes; },
        "Whether the policy enable() chose may rerun segments (recompute, chain, auto).");
  m.def("segment", &run_segment, py::arg("name"), py::arg("fn"), py::arg("inputs"),
        py::arg("module"));
  m.def("stats_json", [] { return actmem::alloc::ProcessAllocators::instance().stats_json(); },
        "The allocator's statistics and, once enabled, the activations', as JSON.");
  m.def("device", &device_name, "The device whose memory actmem manages: 'cuda' or 'cpu'.");
}

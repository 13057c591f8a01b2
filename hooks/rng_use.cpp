#include "hooks/rng_use.h"

#include <ATen/core/function_schema.h>
#include <ATen/record_function.h>

#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>

namespace actmem {
namespace {

// Per thread: how many operators that take a Generator ran while a watch was open, how many
// watches are open, and the callback the outermost one registered.
thread_local std::uint64_t t_draws = 0;
thread_local int t_open_watches = 0;
thread_local at::CallbackHandle t_callback = 0;

bool is_generator(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::GeneratorType) return true;
  const auto optional = type->cast<c10::OptionalType>();
  return optional && is_generator(optional->getElementType());
}

// Operators that draw from the default generator without taking one: CUDA's fused dropout and the
// attention kernels with a dropout probability (counted whatever the probability: they err on the
// side of restoring).
bool draws_without_a_generator_argument(std::string_view name) {
  static const std::string_view kNames[] = {
      "aten::native_dropout",
      "aten::_scaled_dot_product_flash_attention",
      "aten::_scaled_dot_product_efficient_attention",
      "aten::_scaled_dot_product_cudnn_attention",
      "aten::_flash_attention_forward",
      "aten::_efficient_attention_forward",
  };
  for (std::string_view known : kNames) {
    if (name == known) return true;
  }
  return false;
}

// Whether an operator of this name draws random numbers: it takes a Generator in its schema, or
// is one of the above. Names are strings the dispatcher owns for the life of the process, so
// their addresses key the cache.
bool takes_generator(const at::RecordFunction& fn) {
  thread_local std::unordered_map<const char*, bool> known;
  const char* name = fn.name();
  const auto found = known.find(name);
  if (found != known.end()) return found->second;
  bool takes = draws_without_a_generator_argument(name);
  if (const std::optional<c10::FunctionSchema> schema = fn.operator_schema()) {
    for (const c10::Argument& argument : schema->arguments()) takes |= is_generator(argument.type());
  }
  return known.emplace(name, takes).first->second;
}

std::unique_ptr<at::ObserverContext> count_draws(const at::RecordFunction& fn) {
  if (takes_generator(fn)) ++t_draws;
  return nullptr;
}

}  // namespace

RngUseWatch::RngUseWatch() : draws_at_start_(t_draws) {
  if (t_open_watches++ == 0) {
    t_callback = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&count_draws).scopes({at::RecordScope::FUNCTION}));
  }
}

RngUseWatch::~RngUseWatch() {
  if (--t_open_watches == 0) at::removeCallback(t_callback);
}

bool RngUseWatch::drew() const { return t_draws > draws_at_start_; }

}  // namespace actmem

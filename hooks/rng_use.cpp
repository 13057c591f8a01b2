#include "hooks/rng_use.h"

#include <ATen/Context.h>
#include <ATen/core/function_schema.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

namespace actmem {
namespace {

// Per thread: how many operators that draw random numbers ran while a watch was open, how many
// watches are open, and the callback the outermost one registered.
thread_local std::uint64_t t_draws = 0;
thread_local int t_open_watches = 0;
thread_local at::CallbackHandle t_callback = 0;
// The generators of the program's own that operators were given while watches were open, each
// once per watch (from where the innermost open watch began, the last of t_watch_starts, a
// generator is not added again), with a clone of it taken before the operator drew: its state then.
// A clone, not the state's bytes: reading a generator's state allocates a tensor, which can fail
// where actmem manages the CPU under a budget, and LibTorch swallows what a RecordFunction callback
// throws (it logs a warning). The bytes are read in generators_given(), where a failure reaches the
// program.
struct Given {
  at::Generator generator;
  at::Generator before;  // a clone, as `generator` was before its first operator drew
};
thread_local std::vector<Given> t_given;
// What the callback could not do (an allocation failed), the last of it, and how many times:
// generators_given() rethrows it for a watch open when it happened, since a rerun without that
// generator's state would draw other numbers, silently.
thread_local std::exception_ptr t_failure;
thread_local std::uint64_t t_failures = 0;
thread_local std::vector<std::size_t> t_watch_starts;
// The CUDA device whose default generator the state captured with the outermost open watch holds
// (RngState::cuda_device_captured_now() as it began): the current device then, not at the draw (a
// segment may switch devices).
thread_local std::optional<int> t_captured_cuda_device;

// The generators the state captured as the outermost watch began holds.
bool is_default(const at::Generator& generator) {
  const c10::Device device = generator.device();
  if (device.is_cpu()) {
    return generator == at::globalContext().defaultGenerator(c10::DeviceType::CPU);
  }
  return device.is_cuda() && t_captured_cuda_device == device.index() &&
         generator == at::globalContext().defaultGenerator(device);
}

void note_given(at::Generator generator) {
  if (!generator.defined() || is_default(generator)) return;
  for (std::size_t i = t_watch_starts.back(); i < t_given.size(); ++i) {
    if (t_given[i].generator == generator) return;
  }
  std::lock_guard<std::mutex> lock(generator.mutex());
  t_given.push_back({generator, generator.clone()});  // before the operator draws
}

bool is_generator(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::GeneratorType) return true;
  const auto optional = type->cast<c10::OptionalType>();
  return optional && is_generator(optional->getElementType());
}

// Operators that draw from the default generator without taking one: CUDA's fused dropout, and
// the attention kernels when their dropout probability is not zero (they take no Philox offset
// then: `dropout_p > 0`, or not FP_ZERO, in PyTorch's kernels). (native_dropout counts at p = 0
// too: its CUDA kernel still advances the generator.)
struct DefaultDraw {
  std::string_view name;
  bool by_dropout_p;  // only when its dropout_p argument is not zero
};
constexpr DefaultDraw kDrawsWithoutAGeneratorArgument[] = {
    {"aten::native_dropout", false},
    {"aten::_scaled_dot_product_flash_attention", true},
    {"aten::_scaled_dot_product_efficient_attention", true},
    {"aten::_scaled_dot_product_cudnn_attention", true},
    {"aten::_flash_attention_forward", true},
    {"aten::_efficient_attention_forward", true},
};

// How an operator of some name draws random numbers.
struct Draws {
  bool maybe = false;  // it takes a Generator in its schema, or is one of the above
  // Its dropout_p input's position, for those above that draw only when it is not zero; none
  // when that argument cannot be found (the operator then always counts).
  std::optional<std::size_t> dropout_p;
};

// Names are strings the dispatcher owns for the life of the process, so their addresses key the
// cache.
const Draws& draws_of(const at::RecordFunction& fn) {
  thread_local std::unordered_map<const char*, Draws> known;
  const char* name = fn.name();
  const auto found = known.find(name);
  if (found != known.end()) return found->second;
  Draws draws;
  const std::optional<c10::FunctionSchema> schema = fn.operator_schema();
  for (const DefaultDraw& known_draw : kDrawsWithoutAGeneratorArgument) {
    if (name != known_draw.name) continue;
    draws.maybe = true;
    if (!known_draw.by_dropout_p || !schema) continue;
    if (const std::optional<int> index = schema->argumentIndexWithName("dropout_p")) {
      draws.dropout_p = static_cast<std::size_t>(*index);
    }
  }
  if (schema) {
    for (const c10::Argument& argument : schema->arguments()) {
      draws.maybe |= is_generator(argument.type());
    }
  }
  return known.emplace(name, draws).first->second;
}

// Whether this call of an operator draws (see Draws).
bool draws(const at::RecordFunction& fn, const Draws& how) {
  if (!how.maybe) return false;
  if (!how.dropout_p) return true;
  const c10::ArrayRef<c10::IValue> inputs = fn.inputs();
  if (*how.dropout_p >= inputs.size() || !inputs[*how.dropout_p].isDouble()) return true;
  return inputs[*how.dropout_p].toDouble() != 0.0;
}

// The device an operator runs on, from its inputs: its first tensor's, else the device it was
// asked for (a factory such as randn(size, device=...)); the CPU when neither says.
c10::Device device_of(c10::ArrayRef<c10::IValue> inputs) {
  for (const c10::IValue& input : inputs) {
    if (input.isTensor() && input.toTensor().defined()) return input.toTensor().device();
    if (input.isTensorList()) {
      for (const at::Tensor& tensor : input.toTensorList().vec()) {
        if (tensor.defined()) return tensor.device();
      }
    }
  }
  for (const c10::IValue& input : inputs) {
    if (input.isDevice()) return input.toDevice();
  }
  return c10::Device(c10::DeviceType::CPU);
}

void note_draw(const at::RecordFunction& fn) {
  ++t_draws;
  const c10::ArrayRef<c10::IValue> inputs = fn.inputs();
  bool given = false;
  for (const c10::IValue& input : inputs) {
    if (input.isGenerator()) {
      note_given(input.toGenerator());
      given = true;
    }
  }
  // Without a generator of its own, the operator draws from its device's default one: for a CUDA
  // device RngState::capture() does not take (any but the current one where actmem manages CUDA;
  // every one where it manages the CPU), that generator is kept as a given one is.
  if (!given) {
    const c10::Device device = device_of(inputs);
    if (device.is_cuda()) note_given(at::globalContext().defaultGenerator(device));
  }
}

std::unique_ptr<at::ObserverContext> count_draws(const at::RecordFunction& fn) {
  // A thread-local callback follows at::ThreadLocalState to the threads that take it on (autograd's
  // device threads, at::launch): there no watch of this thread's is open.
  if (t_open_watches == 0) return nullptr;
  try {
    if (draws(fn, draws_of(fn))) note_draw(fn);
  } catch (...) {
    t_failure = std::current_exception();
    ++t_failures;
  }
  return nullptr;
}

}  // namespace

RngUseWatch::RngUseWatch()
    : draws_at_start_(t_draws), given_at_start_(t_given.size()), failures_at_start_(t_failures) {
  t_watch_starts.push_back(given_at_start_);
  if (t_open_watches++ == 0) {
    t_captured_cuda_device = RngState::cuda_device_captured_now();
    t_callback = at::addThreadLocalCallback(at::RecordFunctionCallback(&count_draws)
                                                .needsInputs(true)
                                                .scopes({at::RecordScope::FUNCTION}));
  }
}

RngUseWatch::~RngUseWatch() {
  t_watch_starts.pop_back();
  if (--t_open_watches == 0) {
    at::removeCallback(t_callback);
    t_given.clear();
    t_failure = nullptr;
  }
}

bool RngUseWatch::drew() const { return t_draws > draws_at_start_; }

std::vector<GeneratorState> RngUseWatch::generators_given() const {
  if (t_failures > failures_at_start_) std::rethrow_exception(t_failure);
  std::vector<GeneratorState> given;
  for (std::size_t i = given_at_start_; i < t_given.size(); ++i) {
    const at::Generator& generator = t_given[i].generator;
    const bool seen = std::any_of(given.begin(), given.end(),
                                  [&](const GeneratorState& g) { return g.first == generator; });
    if (!seen) given.emplace_back(generator, state_of(t_given[i].before));
  }
  return given;
}

}  // namespace actmem

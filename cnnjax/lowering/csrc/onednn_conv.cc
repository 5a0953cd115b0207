// XLA FFI handler running a 2-D convolution or one of its gradients with oneDNN (the library PyTorch's CPU
// convolutions use), for cnnjax.functional.conv2d's 'onednn' lowering.
//
// One handler, three kinds (attribute `kind`), all operands float32 or all bfloat16 (oneDNN accumulates bfloat16 in
// float32), activations NHWC and kernels HWIO (grouped: H, W, I/groups, O, with O group-major, as
// lax.conv_general_dilated's feature_group_count):
//   0 forward:         (x, w)  -> y
//   1 input gradient:  (dy, w) -> dx
//   2 kernel gradient: (x, dy) -> dw
// Attribute `geometry`: stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_bottom, pad_left, pad_right, groups;
// `threads`: the OpenMP threads a call runs on (fewer than the cores when XLA runs several CPU devices at once).
// Primitives are built once per dtype, shape, geometry and thread count and cached; each call gets its own
// scratchpad, so concurrent calls from XLA's threads are safe.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Kind : int64_t { kForward = 0, kInputGradient = 1, kKernelGradient = 2 };

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// NHWC activations as oneDNN's logical (N, C, H, W).
memory::desc activation_desc(ffi::Span<const int64_t> nhwc, memory::data_type type) {
  return memory::desc({nhwc[0], nhwc[3], nhwc[1], nhwc[2]}, type, memory::format_tag::nhwc);
}

// HWIO kernels as oneDNN's logical (O, I, H, W), or (G, O/G, I/G, H, W) with groups.
memory::desc kernel_desc(ffi::Span<const int64_t> hwio, int64_t groups, bool any_layout, memory::data_type type) {
  const auto layout = any_layout ? memory::format_tag::any
                                 : (groups == 1 ? memory::format_tag::hwio : memory::format_tag::hwigo);
  if (groups == 1) return memory::desc({hwio[3], hwio[2], hwio[0], hwio[1]}, type, layout);
  return memory::desc({groups, hwio[3] / groups, hwio[2], hwio[0], hwio[1]}, type, layout);
}

struct Plan {
  dnnl::primitive conv;
  memory::desc kernel;          // the layout the primitive wants its kernel (or kernel gradient) in
  memory::desc user_kernel;     // HWIO
  memory::desc scratchpad;
  std::unique_ptr<dnnl::reorder> kernel_reorder;  // HWIO <-> the primitive's layout, when they differ

  // the primitive of `pd`, whose kernel (or kernel gradient) is laid out as `kernel_layout`
  template <typename Primitive, typename PrimitiveDesc>
  void use(const PrimitiveDesc& pd, const memory::desc& kernel_layout) {
    conv = Primitive(pd);
    kernel = kernel_layout;
    scratchpad = pd.scratchpad_desc();
  }
};

using Key = std::tuple<int64_t, int64_t, memory::data_type, std::vector<int64_t>, std::vector<int64_t>,
                       std::vector<int64_t>, std::vector<int64_t>>;

Plan make_plan(Kind kind, memory::data_type type, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
               ffi::Span<const int64_t> y, ffi::Span<const int64_t> g) {
  auto& engine = cpu_engine();
  const memory::dims strides = {g[0], g[1]}, dilations = {g[2] - 1, g[3] - 1};
  const memory::dims pad_l = {g[4], g[6]}, pad_r = {g[5], g[7]};
  const int64_t groups = g[8];
  const auto src = activation_desc(x, type), dst = activation_desc(y, type);
  const auto kernel_any = kernel_desc(w, groups, true, type);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::convolution_forward::primitive_desc forward(
      engine, kind == kForward ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, src, kernel_any, dst, strides, dilations, pad_l, pad_r, attr);
  Plan plan;
  plan.user_kernel = kernel_desc(w, groups, false, type);
  if (kind == kForward) {
    plan.use<dnnl::convolution_forward>(forward, forward.weights_desc());
  } else if (kind == kInputGradient) {
    const dnnl::convolution_backward_data::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, src,
                                                            kernel_any, dst, strides, dilations, pad_l, pad_r,
                                                            forward, attr);
    plan.use<dnnl::convolution_backward_data>(pd, pd.weights_desc());
  } else {
    const dnnl::convolution_backward_weights::primitive_desc pd(engine, dnnl::algorithm::convolution_direct, src,
                                                               kernel_any, dst, strides, dilations, pad_l, pad_r,
                                                               forward, attr);
    plan.use<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc());
  }
  if (plan.kernel != plan.user_kernel) {
    const bool to_user = kind == kKernelGradient;
    plan.kernel_reorder = std::make_unique<dnnl::reorder>(dnnl::reorder::primitive_desc(
        engine, to_user ? plan.kernel : plan.user_kernel, engine, to_user ? plan.user_kernel : plan.kernel));
  }
  return plan;
}

// Called with the thread count set (oneDNN sizes its work split by it).
const Plan& cached_plan(Kind kind, int64_t threads, memory::data_type type, ffi::Span<const int64_t> x,
                        ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, ffi::Span<const int64_t> geometry) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  Key key{kind, threads, type, {x.begin(), x.end()}, {w.begin(), w.end()}, {y.begin(), y.end()},
          {geometry.begin(), geometry.end()}};
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) plan = std::make_unique<Plan>(make_plan(kind, type, x, w, y, geometry));
  return *plan;
}

ffi::Error convolve(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t kind_attr,
                    ffi::Span<const int64_t> geometry, int64_t threads) {
  if (kind_attr < kForward || kind_attr > kKernelGradient || geometry.size() != 9 || threads < 1)
    return ffi::Error::InvalidArgument("cnnjax_onednn_conv: kind must be 0-2, geometry hold 9 values, threads >= 1");
  const auto element = a.element_type();
  if ((element != ffi::DataType::F32 && element != ffi::DataType::BF16) || b.element_type() != element ||
      out->element_type() != element)
    return ffi::Error::InvalidArgument("cnnjax_onednn_conv: operands all float32 or all bfloat16");
  const auto type = element == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  const auto kind = static_cast<Kind>(kind_attr);
  // (x, w, y) and their data pointers, whichever two are the inputs
  void* x = kind == kInputGradient ? out->untyped_data() : a.untyped_data();
  void* w = kind == kKernelGradient ? out->untyped_data() : b.untyped_data();
  void* y = kind == kForward ? out->untyped_data() : (kind == kInputGradient ? a.untyped_data() : b.untyped_data());
  const auto x_shape = kind == kInputGradient ? out->dimensions() : a.dimensions();
  const auto w_shape = kind == kKernelGradient ? out->dimensions() : b.dimensions();
  const auto y_shape = kind == kForward ? out->dimensions() : (kind == kInputGradient ? a.dimensions() : b.dimensions());
  omp_set_num_threads(static_cast<int>(threads));  // this calling thread's parallel regions
  try {
    const Plan& plan = cached_plan(kind, threads, type, x_shape, w_shape, y_shape, geometry);
    auto& engine = cpu_engine();
    thread_local dnnl::stream stream(engine);
    // uninitialized: a zero-filled std::vector would write the whole scratchpad first
    const auto scratch = std::make_unique_for_overwrite<uint8_t[]>(plan.scratchpad.get_size());
    std::unique_ptr<uint8_t[]> kernel_scratch;
    memory user_kernel(plan.user_kernel, engine, w), kernel = user_kernel;
    if (plan.kernel_reorder) {
      kernel_scratch = std::make_unique_for_overwrite<uint8_t[]>(plan.kernel.get_size());
      kernel = memory(plan.kernel, engine, kernel_scratch.get());
      if (kind != kKernelGradient) plan.kernel_reorder->execute(stream, user_kernel, kernel);
    }
    memory src(activation_desc(x_shape, type), engine, x), dst(activation_desc(y_shape, type), engine, y);
    memory scratchpad(plan.scratchpad, engine, scratch.get());
    // the operands' argument names: gradients are the diff_ ones
    const int x_arg = kind == kInputGradient ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
    const int w_arg = kind == kKernelGradient ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
    const int y_arg = kind == kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
    plan.conv.execute(stream, {{x_arg, src}, {w_arg, kernel}, {y_arg, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (kind == kKernelGradient && plan.kernel_reorder) plan.kernel_reorder->execute(stream, kernel, user_kernel);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("cnnjax_onednn_conv: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnjaxOnednnConv, convolve,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("geometry")
                                  .Attr<int64_t>("threads"));

// SkinKerasSwishGrad: the gradient of swish, y = x * sigmoid(x), in one pass over memory
// (benchmarks/experiments/swish_grad_op.py builds and measures it).
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

inline float Load(float v) { return v; }
inline float Load(Eigen::bfloat16 v) {
  uint32_t bits = static_cast<uint32_t>(Eigen::numext::bit_cast<uint16_t>(v)) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void Store(float v, float* out) { *out = v; }
inline void Store(float v, Eigen::bfloat16* out) {  // Round to nearest even, as Eigen.
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  uint16_t half = (v != v) ? 0x7fc0 : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  *out = Eigen::numext::bit_cast<Eigen::bfloat16>(half);
}

template <typename T>
class SwishGradOp : public OpKernel {
 public:
  explicit SwishGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream = context->input(0);
    const Tensor& features = context->input(1);
    const Tensor& outputs = context->input(2);
    OP_REQUIRES(context, upstream.shape() == features.shape() && upstream.shape() == outputs.shape(),
                tensorflow::errors::InvalidArgument("SkinKerasSwishGrad: shapes differ"));
    Tensor* backprops = nullptr;
    OP_REQUIRES_OK(context, context->forward_input_or_allocate_output({0}, 0, upstream.shape(), &backprops));
    const T* dy = upstream.flat<T>().data();
    const T* x = features.flat<T>().data();
    const T* y = outputs.flat<T>().data();
    T* dx = backprops->flat<T>().data();
    auto work = [dy, x, y, dx](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float xi = Load(x[i]), yi = Load(y[i]);
        const float gate = xi == 0.0f ? 0.5f : yi / xi;  // sigmoid(x), from the forward output
        Store(Load(dy[i]) * (gate + yi * (1.0f - gate)), dx + i);
      }
    };
    const auto* threads = context->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(threads->num_threads, threads->workers, upstream.NumElements(),
                      /*cost_per_unit=*/20, work);
  }
};

}  // namespace

REGISTER_OP("SkinKerasSwishGrad")
    .Input("upstream: T")
    .Input("features: T")
    .Input("outputs: T")
    .Output("backprops: T")
    .Attr("T: {bfloat16, float}")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("SkinKerasSwishGrad").Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<Eigen::bfloat16>("T"), SwishGradOp<Eigen::bfloat16>);
REGISTER_KERNEL_BUILDER(Name("SkinKerasSwishGrad").Device(tensorflow::DEVICE_CPU)
                            .TypeConstraint<float>("T"), SwishGradOp<float>);

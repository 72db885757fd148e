// Fused kernel rules: one pass over a tile instead of one pass per operation.
//
// The ReLU family's rule (ABRelu: phi(x) = a min(x, 0) + b max(x, 0)) updates a tile of the
// NNGP and NTK in place, entry by entry:
//
//     root  = sqrt(max(q1 q2 - K^2, 0))           (q1 q2 and K^2 rounded separately)
//     theta = atan2(root, K)                       (pi/2 where q1 or q2 is zero)
//     tdot  = half - factor theta                  (one fused multiply-add)
//     Theta = Theta tdot
//     K     = K tdot + factor root                 (one fused multiply-add)
//
// in one pass, with ATen's vectorized types: a correctly rounded square root and SLEEF's
// atan2 with a 3.5-ulp bound (the eager rule's has 1 ulp, and costs twice as much; atan2 is
// most of the rule's time). An input against itself (K^2 == q1 q2 bitwise) still gets an
// angle of exactly 0, since root is then exactly 0. Every entry goes through the vector path,
// the ends of rows included.
//
// Layout: the tile is R = B * C * S rows of L contiguous entries; row r = (b, c, s) pairs
// variance row q1[b * S + s] (a scalar when q1_scalar, else L entries) with q2[c] (L entries).
// The sizes are checked against the tensors before any entry is touched.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <sleef.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace {

// atan2 and asin: SLEEF's 3.5-ulp variants where this build has vector registers (the vector
// width picks the function: d8/f16 for AVX512, d4/f8 for AVX2); ATen's own (1 ulp) otherwise.
#if defined(CPU_CAPABILITY_AVX512)
#define WIDENET_SLEEF_D(fn) Sleef_##fn##d8_u35
#define WIDENET_SLEEF_F(fn) Sleef_##fn##f16_u35
#elif defined(CPU_CAPABILITY_AVX2)
#define WIDENET_SLEEF_D(fn) Sleef_##fn##d4_u35
#define WIDENET_SLEEF_F(fn) Sleef_##fn##f8_u35
#endif

template <typename V>
V atan2_u35(const V& y, const V& x) {
  return y.atan2(x);
}
template <typename V>
V asin_u35(const V& x) {
  return x.asin();
}
#if defined(WIDENET_SLEEF_D)
using VecD = at::vec::Vectorized<double>;
using VecF = at::vec::Vectorized<float>;
template <>
VecD atan2_u35(const VecD& y, const VecD& x) { return WIDENET_SLEEF_D(atan2)(y, x); }
template <>
VecF atan2_u35(const VecF& y, const VecF& x) { return WIDENET_SLEEF_F(atan2)(y, x); }
template <>
VecD asin_u35(const VecD& x) { return WIDENET_SLEEF_D(asin)(x); }
template <>
VecF asin_u35(const VecF& x) { return WIDENET_SLEEF_F(asin)(x); }
#endif

template <typename scalar_t>
void abrelu_rows(scalar_t* nngp, scalar_t* ntk, const scalar_t* q1, const scalar_t* q2,
                 int64_t C, int64_t S, int64_t L, bool q1_scalar, double factor, double half,
                 int64_t begin, int64_t end) {
  using V = at::vec::Vectorized<scalar_t>;
  const V zero = V(static_cast<scalar_t>(0)), pi2 = V(static_cast<scalar_t>(M_PI / 2));
  const V vhalf = V(static_cast<scalar_t>(half)), vneg = V(static_cast<scalar_t>(-factor));
  const V vfac = V(static_cast<scalar_t>(factor));
  const int64_t width = V::size();
  for (int64_t r = begin; r < end; ++r) {
    const int64_t s = r % S, bc = r / S, c = bc % C, b = bc / C;
    scalar_t* k_row = nngp + r * L;
    scalar_t* t_row = ntk == nullptr ? nullptr : ntk + r * L;
    const scalar_t* q2_row = q2 + c * L;
    const scalar_t* q1_row = q1 + (b * S + s) * (q1_scalar ? 1 : L);
    const V q1_one = V(q1_row[0]);
    for (int64_t j = 0; j < L; j += width) {
      const int64_t n = std::min(width, L - j);
      const V k = V::loadu(k_row + j, n);
      const V a = q1_scalar ? q1_one : V::loadu(q1_row + j, n);
      const V q = V::loadu(q2_row + j, n);
      const V d = at::vec::maximum(a * q - k * k, zero);
      const V root = d.sqrt();
      V theta = atan2_u35(root, k);
      const V degenerate = (a == zero) | (q == zero);  // a zero variance: theta = pi/2
      theta = V::blendv(theta, pi2, degenerate);
      const V tdot = at::vec::fmadd(theta, vneg, vhalf);
      if (t_row != nullptr) {
        (V::loadu(t_row + j, n) * tdot).store(t_row + j, n);
      }
      at::vec::fmadd(root, vfac, k * tdot).store(k_row + j, n);
    }
  }
}

void abrelu(torch::Tensor nngp, c10::optional<torch::Tensor> ntk, torch::Tensor q1, torch::Tensor q2,
            int64_t C, int64_t S, int64_t L, bool q1_scalar, double factor, double half) {
  TORCH_CHECK(nngp.is_contiguous() && q1.is_contiguous() && q2.is_contiguous(), "fused.abrelu: contiguous tensors only");
  TORCH_CHECK(L > 0 && nngp.numel() % L == 0, "fused.abrelu: rows of ", L, " entries do not tile the tile");
  const int64_t R = nngp.numel() / L;
  TORCH_CHECK(R % (C * S) == 0 && q2.numel() == C * L && q1.numel() == (R / (C * S)) * S * (q1_scalar ? 1 : L),
              "fused.abrelu: variances do not match the tile");
  const bool has_ntk = ntk.has_value() && ntk->defined();
  if (has_ntk) TORCH_CHECK(ntk->is_contiguous() && ntk->numel() == nngp.numel(), "fused.abrelu: ntk like nngp");
  AT_DISPATCH_FLOATING_TYPES(nngp.scalar_type(), "fused.abrelu", [&] {
    scalar_t* k = nngp.data_ptr<scalar_t>();
    scalar_t* t = has_ntk ? ntk->data_ptr<scalar_t>() : nullptr;
    const scalar_t* a = q1.data_ptr<scalar_t>();
    const scalar_t* b = q2.data_ptr<scalar_t>();
    // Rows of a few thousand entries per task: torch's own grain for elementwise ops.
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(L, 1));
    at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
      abrelu_rows<scalar_t>(k, t, a, b, C, S, L, q1_scalar, factor, half, begin, end);
    });
  });
}

// ---- Window sums: every offset of a flat shifted sum in one pass ------------------------------
//
// windows.py's flat-offset window sum (stride 1, size preserving): each row of the flattened
// tile gets out[i] = in[i] (when the window holds the unshifted offset, else 0), then
// out[i] += in[i + delta] * mask[i] for every other offset in order, where the 0/1 mask keeps
// the positions whose source lies inside the input. The same additions in the same order as
// the eager path, which makes a pass over the tile per offset: the same numbers, bit for bit.

template <typename scalar_t>
void shifted_rows(const scalar_t* in, scalar_t* out, int64_t block, const std::vector<int64_t>& deltas,
                  const std::vector<const scalar_t*>& masks, bool has_zero, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* src = in + r * block;
    scalar_t* dst = out + r * block;
    if (has_zero) {
      std::copy(src, src + block, dst);
    } else {
      std::fill(dst, dst + block, scalar_t(0));
    }
    for (size_t k = 0; k < deltas.size(); ++k) {
      const int64_t delta = deltas[k];
      const scalar_t* m = masks[k];
      const int64_t first = delta > 0 ? 0 : -delta, last = delta > 0 ? block - delta : block;
      for (int64_t i = first; i < last; ++i) dst[i] = dst[i] + src[i + delta] * m[i];
    }
  }
}

void shifted_sum(torch::Tensor flat, torch::Tensor out, std::vector<int64_t> deltas, std::vector<torch::Tensor> masks,
                 bool has_zero) {
  TORCH_CHECK(flat.dim() == 2 && flat.is_contiguous() && out.is_contiguous() && out.sizes() == flat.sizes(),
              "fused.shifted_sum: a contiguous (rows, block) tile and an output like it");
  TORCH_CHECK(masks.size() == deltas.size(), "fused.shifted_sum: one mask per offset");
  const int64_t rows = flat.size(0), block = flat.size(1);
  for (size_t k = 0; k < deltas.size(); ++k) {
    TORCH_CHECK(std::abs(deltas[k]) < block && deltas[k] != 0, "fused.shifted_sum: offsets within the block, not 0");
    TORCH_CHECK(masks[k].is_contiguous() && masks[k].numel() == block && masks[k].scalar_type() == flat.scalar_type(),
                "fused.shifted_sum: masks of the block's size and the tile's dtype");
  }
  AT_DISPATCH_FLOATING_TYPES(flat.scalar_type(), "fused.shifted_sum", [&] {
    std::vector<const scalar_t*> m;
    for (auto& t : masks) m.push_back(t.data_ptr<scalar_t>());
    const scalar_t* in = flat.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(block, 1));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      shifted_rows<scalar_t>(in, o, block, deltas, m, has_zero, begin, end);
    });
  });
}

// ---- Tanh as a scale mixture of erfs (layers/tanh.py) --------------------------------------------
//
// For every entry e of a flat tile, with a1[i], a2[j] the row and column operands of node i, j
// (stored node-major: a1[i * E + e]) and ww[i * M + j] the products of the nodes' weights:
//
//     x    = K a1[i] a2[j]
//     T    = (2/pi) sum_ij ww[ij] asin(x)                         -> nngp, in place
//     Tdot = (2/pi) sum_ij ww[ij] a1[i] a2[j] / sqrt(1 - x^2)     -> ntk *= Tdot
//
// in one pass, 8 (AVX512) or 4 (AVX2) entries at a time, with SLEEF's 3.5-ulp asin (above).


template <typename scalar_t>
void mixture_entries(scalar_t* nngp, scalar_t* ntk, const scalar_t* a1, const scalar_t* a2, const scalar_t* ww,
                     int64_t E, int64_t M, int64_t begin, int64_t end) {
  using V = at::vec::Vectorized<scalar_t>;
  const V one = V(static_cast<scalar_t>(1)), scale = V(static_cast<scalar_t>(2.0 / M_PI));
  const int64_t width = V::size();
  for (int64_t e = begin; e < end; e += width) {
    const int64_t n = std::min(width, end - e);
    const V k = V::loadu(nngp + e, n);
    V t = V(static_cast<scalar_t>(0)), tdot = t;
    for (int64_t i = 0; i < M; ++i) {
      const V ai = V::loadu(a1 + i * E + e, n);
      for (int64_t j = 0; j < M; ++j) {
        const V w = V(ww[i * M + j]);
        const V prod = ai * V::loadu(a2 + j * E + e, n);
        const V x = k * prod;
        t = at::vec::fmadd(w, asin_u35(x), t);
        if (ntk != nullptr) tdot = at::vec::fmadd(w * prod, (one - x * x).rsqrt(), tdot);
      }
    }
    (t * scale).store(nngp + e, n);
    if (ntk != nullptr) (V::loadu(ntk + e, n) * tdot * scale).store(ntk + e, n);
  }
}

void tanh_mixture(torch::Tensor nngp, c10::optional<torch::Tensor> ntk, torch::Tensor a1, torch::Tensor a2,
                  torch::Tensor ww) {
  TORCH_CHECK(nngp.dim() == 1 && nngp.is_contiguous(), "fused.tanh_mixture: a flat contiguous tile");
  const int64_t E = nngp.numel(), M = a1.size(0);
  TORCH_CHECK(a1.dim() == 2 && a1.is_contiguous() && a1.size(1) == E && a2.sizes() == a1.sizes() &&
              a2.is_contiguous() && ww.is_contiguous() && ww.numel() == M * M,
              "fused.tanh_mixture: operands (M, E) and weights (M, M) for a tile of E entries");
  TORCH_CHECK(a1.scalar_type() == nngp.scalar_type() && a2.scalar_type() == nngp.scalar_type() &&
              ww.scalar_type() == nngp.scalar_type(), "fused.tanh_mixture: one dtype");
  const bool has_ntk = ntk.has_value() && ntk->defined();
  if (has_ntk) TORCH_CHECK(ntk->is_contiguous() && ntk->numel() == E, "fused.tanh_mixture: ntk like nngp");
  AT_DISPATCH_FLOATING_TYPES(nngp.scalar_type(), "fused.tanh_mixture", [&] {
    scalar_t* k = nngp.data_ptr<scalar_t>();
    scalar_t* t = has_ntk ? ntk->data_ptr<scalar_t>() : nullptr;
    const scalar_t* p = a1.data_ptr<scalar_t>();
    const scalar_t* q = a2.data_ptr<scalar_t>();
    const scalar_t* w = ww.data_ptr<scalar_t>();
    // Each entry costs 2 M^2 transcendental functions: small grains keep both cores busy.
    const int64_t grain = 512;
    at::parallel_for(0, E, grain, [&](int64_t begin, int64_t end) {
      mixture_entries<scalar_t>(k, t, p, q, w, E, M, begin, end);
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tanh_mixture", &tanh_mixture, "Tanh's erf-mixture kernel rule on a flat tile, in place, in one pass");
  m.def("abrelu", &abrelu, "ABRelu's kernel rule on a tile, in place, in one pass");
  m.def("shifted_sum", &shifted_sum, "A flat-offset window sum, every offset in one pass");
}

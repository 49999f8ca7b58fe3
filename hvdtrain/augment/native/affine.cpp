// Fused CPU kernel for hvdtrain's augmentation: per output pixel, the input coordinate from a float64
// affine matrix, SciPy's boundary rule of the fill mode, and bilinear interpolation over the channels, in
// one pass over NHWC float32 images, on several threads. It computes exactly what the numpy path of
// hvdtrain/augment/kernel.py computes (affine_sample with _gather_bilinear): the same float64 coordinate
// arithmetic and boundary decisions, the same float32 interpolation. Build flags keep the compiler from
// fusing multiply-adds (-ffp-contract=off), which would change the rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

enum Mode { CONSTANT = 0, NEAREST = 1, REFLECT = 2, WRAP = 3 };

// numpy.remainder for floats: the result takes the sign of the divisor.
inline double py_remainder(double a, double b) {
  double mod = std::fmod(a, b);
  if (mod != 0.0 && ((b < 0.0) != (mod < 0.0))) mod += b;
  return mod;
}

// SciPy's boundary rule for order-1 interpolation, as kernel._scipy_coordinate.
inline double boundary(double c, int64_t n, int mode) {
  const double last = static_cast<double>(n - 1);
  if (n == 1) return 0.0;
  double mapped;
  if (mode == NEAREST || mode == CONSTANT) {
    mapped = c;
  } else if (mode == REFLECT) {
    const double period = 2.0 * static_cast<double>(n);
    const double u = py_remainder(c, period);
    mapped = u >= static_cast<double>(n) ? period - 1.0 - u : u;
  } else {
    const double u = py_remainder(c, last);
    mapped = c < 0.0 ? (u == 0.0 ? last : u) : (c > last ? u : c);
  }
  return std::min(std::max(mapped, 0.0), last);
}

struct Job {
  const float* in;
  float* out;
  const double* mats;
  const uint8_t* moved;
  int64_t n, h, w, c;
  int mode;
  float cval;
};

// CH > 0: the channel count known at compile time (the inner loop unrolls); 0: any, read from the job.
template <int CH>
void run_rows(const Job& job, int64_t first, int64_t end) {
  const int64_t h = job.h, w = job.w, ch = CH > 0 ? CH : job.c;
  const int64_t image_size = h * w * ch;
  for (int64_t task = first; task < end; ++task) {
    const int64_t img = task / h, i = task % h;
    const float* src = job.in + img * image_size;
    float* dst = job.out + img * image_size + i * w * ch;
    if (!job.moved[img]) {
      std::memcpy(dst, src + i * w * ch, sizeof(float) * w * ch);
      continue;
    }
    const double* m = job.mats + img * 6;
    const double row = static_cast<double>(i);
    for (int64_t j = 0; j < w; ++j) {
      const double col = static_cast<double>(j);
      const double r_in = row * m[0] + col * m[1] + m[2];  // SciPy's order of operations
      const double c_in = row * m[3] + col * m[4] + m[5];
      float* px = dst + j * ch;
      if (job.mode == CONSTANT &&
          !(r_in >= 0.0 && r_in <= static_cast<double>(h - 1) && c_in >= 0.0 && c_in <= static_cast<double>(w - 1))) {
        for (int64_t k = 0; k < ch; ++k) px[k] = job.cval;
        continue;
      }
      const double r = boundary(r_in, h, job.mode), cc = boundary(c_in, w, job.mode);
      // Both are in [0, n-1] here, where truncation is floor (and needs no libm call).
      const int64_t r0i = static_cast<int64_t>(r), c0i = static_cast<int64_t>(cc);
      const float fr = static_cast<float>(r - static_cast<double>(r0i));
      const float fc = static_cast<float>(cc - static_cast<double>(c0i));
      const int64_t r1i = std::min(r0i + 1, h - 1), c1i = std::min(c0i + 1, w - 1);
      const float* p00 = src + (r0i * w + c0i) * ch;
      const float* p01 = src + (r0i * w + c1i) * ch;
      const float* p10 = src + (r1i * w + c0i) * ch;
      const float* p11 = src + (r1i * w + c1i) * ch;
      const float gc = 1.0f - fc, gr = 1.0f - fr;
      for (int64_t k = 0; k < ch; ++k) {
        const float top = p00[k] * gc + p01[k] * fc;
        const float bottom = p10[k] * gc + p11[k] * fc;
        px[k] = top * gr + bottom * fr;
      }
    }
  }
}

}  // namespace

extern "C" int hvdtrain_affine(const float* in, float* out, const double* mats, const uint8_t* moved, int64_t n,
                               int64_t h, int64_t w, int64_t c, int mode, float cval, int threads) {
  if (n < 0 || h < 1 || w < 1 || c < 1 || mode < 0 || mode > 3) return 1;
  const Job job{in, out, mats, moved, n, h, w, c, mode, cval};
  void (*rows)(const Job&, int64_t, int64_t) = c == 3 ? run_rows<3> : c == 1 ? run_rows<1> : run_rows<0>;
  const int64_t tasks = n * h;
  const int64_t count = std::max<int64_t>(1, std::min<int64_t>(threads, tasks));
  if (count == 1) {
    rows(job, 0, tasks);
    return 0;
  }
  std::vector<std::thread> pool;
  pool.reserve(count);
  for (int64_t t = 0; t < count; ++t) {
    pool.emplace_back(rows, std::cref(job), tasks * t / count, tasks * (t + 1) / count);
  }
  for (auto& thread : pool) thread.join();
  return 0;
}

// Fused CPU kernel for hvdtrain's augmentation: per output pixel, the input coordinate from a float64
// affine matrix, SciPy's boundary rule of the fill mode, and bilinear interpolation over the channels, in
// one pass over NHWC float32 images, on several threads. It computes exactly what the numpy path of
// hvdtrain/augment/kernel.py computes (affine_sample with _gather_bilinear): the same float64 coordinate
// arithmetic and boundary decisions, the same float32 interpolation, bit for bit. Build flags keep the
// compiler from fusing multiply-adds (-ffp-contract=off), which would change the rounding.
//
// Each output row is done in two passes: (1) coordinates, boundary rule, integer corners and fractions for
// the whole row into small per-thread buffers, loops the compiler vectorises (native.py builds with
// -march=native where the compiler allows it); (2) the gathers and the interpolation, per pixel, with SSE
// for three-channel images. Offsets are int32 (they vectorise; hvdtrain_affine refuses images of 2**31
// floats or more, which the caller then leaves to the framework kernel).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

enum Mode { CONSTANT = 0, NEAREST = 1, REFLECT = 2, WRAP = 3 };

// numpy.remainder for floats: the result takes the sign of the divisor.
inline double py_remainder(double a, double b) {
  double mod = std::fmod(a, b);
  if (mod != 0.0 && ((b < 0.0) != (mod < 0.0))) mod += b;
  return mod;
}

// SciPy's boundary rule for order-1 interpolation outside [0, n-1], as kernel._scipy_coordinate (n > 1).
inline double fold(double c, int64_t n, int mode) {
  const double last = static_cast<double>(n - 1);
  double mapped;
  if (mode == REFLECT) {
    const double period = 2.0 * static_cast<double>(n);
    const double u = py_remainder(c, period);
    mapped = u >= static_cast<double>(n) ? period - 1.0 - u : u;
  } else {
    const double u = py_remainder(c, last);
    mapped = c < 0.0 ? (u == 0.0 ? last : u) : (c > last ? u : c);
  }
  return std::min(std::max(mapped, 0.0), last);
}

// Maps a row of coordinates into [0, n-1] in place. Inside [0, n-1] every mode is the identity (the
// remainders of reflect and wrap return the coordinate itself there), so only the rest needs fold().
void boundary_row(double* c, int64_t count, int64_t n, int mode) {
  const double last = static_cast<double>(n - 1);
  if (n == 1) {
    for (int64_t j = 0; j < count; ++j) c[j] = 0.0;
    return;
  }
  if (mode == NEAREST || mode == CONSTANT) {
    for (int64_t j = 0; j < count; ++j) c[j] = std::min(std::max(c[j], 0.0), last);
    return;
  }
  for (int64_t j = 0; j < count; ++j) {
    if (!(c[j] >= 0.0 && c[j] <= last)) c[j] = fold(c[j], n, mode);
  }
}

#if defined(__SSE2__)
// Three-channel pixels as four-float SSE vectors: the same float operations per channel as the scalar loop
// (so the same bits), a quarter of the instructions. The fourth lane reads one float past the pixel, which
// stays inside the image except at its very end; those pixels, and the last one of the row (whose fourth
// lane would be stored into the next row, possibly another thread's), are left to the scalar loop.
// Returns the first column it did not do.
int64_t interpolate_rgb_sse(const float* src, float* dst, int64_t image_size, int64_t w, const uint8_t* outside,
                            float cval, const int32_t* at, const int32_t* down, const int32_t* right,
                            const float* fr, const float* fc) {
  const __m128 one = _mm_set1_ps(1.0f), fill = _mm_set1_ps(cval);
  int64_t j = 0;
  for (; j + 1 < w; ++j) {
    const int64_t a = at[j], bottom_right = a + down[j] + right[j];
    if (bottom_right + 3 >= image_size) break;
    float* px = dst + j * 3;
    if (outside && outside[j]) {
      _mm_storeu_ps(px, fill);
      continue;
    }
    const __m128 vfc = _mm_set1_ps(fc[j]), vfr = _mm_set1_ps(fr[j]);
    const __m128 gc = _mm_sub_ps(one, vfc), gr = _mm_sub_ps(one, vfr);
    const __m128 p00 = _mm_loadu_ps(src + a), p01 = _mm_loadu_ps(src + a + right[j]);
    const __m128 p10 = _mm_loadu_ps(src + a + down[j]), p11 = _mm_loadu_ps(src + bottom_right);
    const __m128 top = _mm_add_ps(_mm_mul_ps(p00, gc), _mm_mul_ps(p01, vfc));
    const __m128 low = _mm_add_ps(_mm_mul_ps(p10, gc), _mm_mul_ps(p11, vfc));
    _mm_storeu_ps(px, _mm_add_ps(_mm_mul_ps(top, gr), _mm_mul_ps(low, vfr)));
  }
  return j;
}
#endif

struct Job {
  const float* in;
  float* out;
  const double* mats;
  const uint8_t* moved;
  int64_t n, h, w, c;
  int mode;
  float cval;
};

struct RowBuffers {
  std::vector<double> r, c;
  std::vector<int32_t> at;      // offset of the top-left corner
  std::vector<int32_t> down;    // offset from the top to the bottom row (0 on the last row)
  std::vector<int32_t> right;   // offset from the left to the right column (0 on the last column)
  std::vector<float> fr, fc;
  std::vector<uint8_t> outside;
  explicit RowBuffers(int64_t w)
      : r(w), c(w), at(w), down(w), right(w), fr(w), fc(w), outside(w) {}
};

// CH > 0: the channel count known at compile time (the inner loop unrolls); 0: any, read from the job.
template <int CH>
void run_rows(const Job& job, int64_t first, int64_t end) {
  const int64_t h = job.h, w = job.w, ch = CH > 0 ? CH : job.c;
  const int64_t image_size = h * w * ch;
  const double last_r = static_cast<double>(h - 1), last_c = static_cast<double>(w - 1);
  const int32_t h32 = static_cast<int32_t>(h), w32 = static_cast<int32_t>(w), ch32 = static_cast<int32_t>(ch);
  RowBuffers b(w);
  double* __restrict r = b.r.data();
  double* __restrict c = b.c.data();
  int32_t* __restrict at = b.at.data();
  int32_t* __restrict down = b.down.data();
  int32_t* __restrict right = b.right.data();
  float* __restrict fr = b.fr.data();
  float* __restrict fc = b.fc.data();
  uint8_t* __restrict outside = b.outside.data();
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
    const double r_row = row * m[0], c_row = row * m[3];
    for (int64_t j = 0; j < w; ++j) {  // SciPy's order of operations: (row*a + col*b) + offset
      const double col = static_cast<double>(j);
      r[j] = (r_row + col * m[1]) + m[2];
      c[j] = (c_row + col * m[4]) + m[5];
    }
    if (job.mode == CONSTANT) {
      for (int64_t j = 0; j < w; ++j) {
        outside[j] = !(r[j] >= 0.0 && r[j] <= last_r && c[j] >= 0.0 && c[j] <= last_c);
      }
    }
    boundary_row(r, w, h, job.mode);
    boundary_row(c, w, w, job.mode);
    for (int64_t j = 0; j < w; ++j) {
      // Both are in [0, n-1] here, where truncation is floor.
      const int32_t r0 = static_cast<int32_t>(r[j]), c0 = static_cast<int32_t>(c[j]);
      fr[j] = static_cast<float>(r[j] - static_cast<double>(r0));
      fc[j] = static_cast<float>(c[j] - static_cast<double>(c0));
      at[j] = (r0 * w32 + c0) * ch32;
      down[j] = r0 + 1 < h32 ? w32 * ch32 : 0;
      right[j] = c0 + 1 < w32 ? ch32 : 0;
    }
    int64_t j = 0;
#if defined(__SSE2__)
    if (CH == 3) j = interpolate_rgb_sse(src, dst, image_size, w, job.mode == CONSTANT ? outside : nullptr, job.cval,
                                         at, down, right, fr, fc);
#endif
    for (; j < w; ++j) {
      float* px = dst + j * ch;
      if (job.mode == CONSTANT && outside[j]) {
        for (int64_t k = 0; k < ch; ++k) px[k] = job.cval;
        continue;
      }
      const float* p00 = src + at[j];
      const float* p01 = p00 + right[j];
      const float* p10 = p00 + down[j];
      const float* p11 = p10 + right[j];
      const float gc = 1.0f - fc[j], gr = 1.0f - fr[j], fcj = fc[j], frj = fr[j];
      for (int64_t k = 0; k < ch; ++k) {
        const float top = p00[k] * gc + p01[k] * fcj;
        const float bottom = p10[k] * gc + p11[k] * fcj;
        px[k] = top * gr + bottom * frj;
      }
    }
  }
}

}  // namespace

extern "C" int hvdtrain_affine(const float* in, float* out, const double* mats, const uint8_t* moved, int64_t n,
                               int64_t h, int64_t w, int64_t c, int mode, float cval, int threads) {
  if (n < 0 || h < 1 || w < 1 || c < 1 || mode < 0 || mode > 3) return 1;
  if (h * w * c >= (int64_t{1} << 31) - 4) return 1;  // int32 offsets
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

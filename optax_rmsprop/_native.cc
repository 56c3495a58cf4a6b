// Blockwise encoding of low-bit optimizer state in one pass, written in place (an XLA FFI handler
// for CPU; see _native.py). The arithmetic is _quant.py's, operation for operation in float32:
// the block's maximum, the golden-ratio noise hashed from its bits, the codes; only the number of
// passes differs. XLA:CPU computes a chunk's block maxima, then its codes, then copies them into
// the state, each pass its own kernel; here each block is read once, while it is in cache.
//
// Built by _native.py with the system's C++ compiler against jaxlib's FFI headers. Compiled with
// -ffp-contract=off, so that no multiply-add is fused where XLA rounds twice.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "4-bit words are packed from bytes in little-endian order");

namespace {

enum Kind : int64_t { kUnsigned8 = 0, kSigned8 = 1, kFour = 2 };

constexpr double kPhi = 0.6180339887498949;  // the golden ratio's fractional part

struct Geometry {
  int64_t kind, width, block, nb;  // elements per row, block length, blocks per row
  int64_t codes_per_row() const { return kind == kFour ? nb * block / 8 : width; }
};

// murmur3's finaliser of the scale's bits, as _quant._dither: the block's noise offset in [0, 1).
inline float Offset(float scale) {
  uint32_t h;
  std::memcpy(&h, &scale, 4);
  h = (h ^ (h >> 16)) * 0x85EBCA6Bu;
  h = (h ^ (h >> 13)) * 0xC2B2AE35u;
  h = h ^ (h >> 16);
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

inline float Inverse(float scale) { return scale > 0 ? 1.0f / scale : 0.0f; }

// A float code (possibly NaN) to an integer, as XLA converts: NaN to 0.
inline uint32_t ToCode(float c) { return c == c ? static_cast<uint32_t>(c) : 0u; }

// One block of ``L`` (a template argument where it is 256 or 128, so that the loops have a known
// length; 0: ``g.block``) elements: ``n`` values at ``x`` (``n < L``: the row's padded last block,
// its padding 0).
template <int64_t kL>
void EncodeBlock(const Geometry& g, const float* __restrict place, const float* __restrict x, int64_t n,
                 void* codes, float* scale, float* __restrict work) {
  const int64_t L = kL ? kL : g.block;
  if (kL) n = kL;  // (whole blocks only: the loops' bounds are constants)
  // The maximum in 16 lanes (which the compiler vectorises), NaN propagating as XLA's.
  float lanes[16], any_nan[16];
  for (int l = 0; l < 16; ++l) lanes[l] = n < L ? 0.0f : -INFINITY, any_nan[l] = 0.0f;
  const bool magnitude = g.kind == kSigned8;
  int64_t i0 = 0;
  for (; i0 + 16 <= n; i0 += 16) {
    for (int l = 0; l < 16; ++l) {
      const float a = magnitude ? std::fabs(x[i0 + l]) : x[i0 + l];
      lanes[l] = a > lanes[l] ? a : lanes[l];
      any_nan[l] = a != a ? 1.0f : any_nan[l];
    }
  }
  // (Halving, so that the lanes reduce in vector registers too.)
  for (int w = 8; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) {
      lanes[l] = lanes[l + w] > lanes[l] ? lanes[l + w] : lanes[l];
      any_nan[l] = any_nan[l] + any_nan[l + w];
    }
  }
  float m = lanes[0];
  bool nan = any_nan[0] != 0.0f;
  for (int64_t i = i0; i < n; ++i) {
    const float a = magnitude ? std::fabs(x[i]) : x[i];
    m = a > m ? a : m;
    nan |= a != a;
  }
  if (nan) m = NAN;
  *scale = m;
  const float inv = Inverse(m), offset = Offset(m);
  // The codes, each with its noise frac(place + offset).
  if (g.kind == kUnsigned8) {
    uint8_t* __restrict c = static_cast<uint8_t*>(codes);
    for (int64_t i = 0; i < n; ++i) {
      float t = offset + place[i];
      t = t >= 1.0f ? t - 1.0f : t;
      float r = x[i] * inv;
      r = r < 0.0f ? 0.0f : r;  // (NaN stays NaN, as jnp.maximum)
      float q = std::floor(255.0f * std::sqrt(std::sqrt(r)) + t);
      q = q > 0.0f ? (q < 255.0f ? q : 255.0f) : 0.0f;  // (NaN: 0)
      c[i] = static_cast<uint8_t>(static_cast<int32_t>(q));
    }
  } else if (g.kind == kSigned8) {
    uint8_t* __restrict c = static_cast<uint8_t*>(codes);
    for (int64_t i = 0; i < n; ++i) {
      float t = offset + place[i];
      t = t >= 1.0f ? t - 1.0f : t;
      const float r = x[i] * inv;
      float q = std::floor(127.0f * std::sqrt(std::fabs(r)) + t);
      q = q < 127.0f ? q : 127.0f;
      // (A NaN, the input's, reads as 127: its block's scale is NaN, which the block decodes to.)
      q = 127.0f + (r > 0.0f ? q : (r < 0.0f ? -q : 0.0f));
      c[i] = static_cast<uint8_t>(static_cast<int32_t>(q));
    }
  } else {
    // Element 8w + j of the block in bits 4j..4j+3 of its word w.
    // Codes as bytes, then eight bytes (eight neighbours) to a word by shifts within 64 bits.
    uint8_t* __restrict q = reinterpret_cast<uint8_t*>(work);
    for (int64_t i = 0; i < L; ++i) {
      float t = offset + place[i];
      t = t >= 1.0f ? t - 1.0f : t;
      const float v = i < n ? x[i] : 0.0f;
      const float s = std::sqrt(v * inv);
      const float low = std::floor(16.0f * std::sqrt(s));
      const float up = 256.0f * s - low * low > t * (2.0f * low + 1.0f) ? 1.0f : 0.0f;
      const float c = low + up - 1.0f;
      q[i] = static_cast<uint8_t>(static_cast<int32_t>(c > 0.0f ? (c < 15.0f ? c : 15.0f) : 0.0f));  // (NaN: 0)
    }
    uint32_t* __restrict words = static_cast<uint32_t*>(codes);
    for (int64_t w = 0; w < L / 8; ++w) {
      uint64_t b;
      std::memcpy(&b, q + 8 * w, 8);  // byte j: code j (little-endian)
      b = (b | (b >> 4)) & 0x00FF00FF00FF00FFull;
      b = (b | (b >> 8)) & 0x0000FFFF0000FFFFull;
      words[w] = static_cast<uint32_t>(b | (b >> 16));
    }
  }
}

void EncodeRange(const Geometry& g, const float* place, const float* x, int64_t row0, void* codes,
                 float* scales, int64_t first, int64_t last) {
  std::vector<float> work(g.block);
  const int64_t cbytes = g.kind == kFour ? 4 : 1;
  // Blocks first..last-1 of the chunk, row by row (one division per range, not per block).
  int64_t row = first / g.nb, k = first % g.nb;
  for (int64_t b = first; b < last; ++b) {
    const int64_t start = k * g.block, n = std::min(g.block, g.width - start);
    const int64_t code_at = (row0 + row) * g.codes_per_row() + (g.kind == kFour ? k * g.block / 8 : start);
    auto* c = static_cast<char*>(codes) + code_at * cbytes;
    const float* xb = x + row * g.width + start;
    float* scale = scales + (row0 + row) * g.nb + k;
    if (g.block == 256 && n == 256) {
      EncodeBlock<256>(g, place, xb, n, c, scale, work.data());
    } else if (g.block == 128 && n == 128) {
      EncodeBlock<128>(g, place, xb, n, c, scale, work.data());
    } else {
      EncodeBlock<0>(g, place, xb, n, c, scale, work.data());
    }
    if (++k == g.nb) k = 0, ++row;
  }
}

// One call's work, shared by this thread and the pool's (which may start after the call returned:
// then they find no piece left, and touch nothing but this).
struct Job {
  Geometry g;
  std::vector<float> place;  // frac(i phi), i < block
  const float* x;
  int64_t row0;
  void* codes;
  float* scales;
  int64_t blocks, piece, pieces;
  std::atomic<int64_t> next{0}, done{0};
};

// Claims pieces of ``job`` from its counter until none is left.
void Work(Job& job) {
  for (int64_t p; (p = job.next.fetch_add(1)) < job.pieces;) {
    EncodeRange(job.g, job.place.data(), job.x, job.row0, job.codes, job.scales, p * job.piece,
                std::min(job.blocks, (p + 1) * job.piece));
    job.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error Encode(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer codes_in,
                  ffi::Buffer<ffi::F32> scales_in, ffi::Buffer<ffi::S32> at,
                  ffi::Result<ffi::AnyBuffer> codes, ffi::Result<ffi::Buffer<ffi::F32>> scales,
                  int64_t kind, int64_t width, int64_t block, int64_t nb) {
  const Geometry g{kind, width, block, nb};
  if (width <= 0 || block <= 0 || nb <= 0 || (kind == kFour && block % 8) || nb * block < width ||
      (nb - 1) * block >= width) {
    return ffi::Error::InvalidArgument("optax_rmsprop encode: inconsistent block geometry");
  }
  const int64_t rows = static_cast<int64_t>(x.element_count()) / width;
  const int64_t row0 = *at.typed_data();
  const int64_t total_rows = static_cast<int64_t>(scales->element_count()) / nb;
  if (row0 < 0 || row0 + rows > total_rows) {
    return ffi::Error::InvalidArgument("optax_rmsprop encode: rows out of range");
  }
  void* out = codes->untyped_data();
  float* sc = scales->typed_data();
  if (out != codes_in.untyped_data()) {
    std::memcpy(out, codes_in.untyped_data(), codes_in.size_bytes());
  }
  if (sc != scales_in.typed_data()) {
    std::memcpy(sc, scales_in.typed_data(), scales_in.size_bytes());
  }
  auto job = std::make_shared<Job>();
  job->g = g;
  job->place.resize(block);
  for (int64_t i = 0; i < block; ++i) {
    const double v = static_cast<double>(i) * kPhi;
    job->place[i] = static_cast<float>(v - std::floor(v));  // (exact: fmod(v, 1) for v >= 0)
  }
  job->x = x.typed_data();
  job->row0 = row0;
  job->codes = out;
  job->scales = sc;
  job->blocks = rows * nb;
  // Pieces of at least 64 KiB of input, claimed from a counter by the pool's threads and by this
  // one, which waits only for pieces another thread has claimed (no deadlock if the pool is busy).
  job->piece = std::max<int64_t>(1, (1 << 14) / block);
  job->pieces = (job->blocks + job->piece - 1) / job->piece;
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, job->pieces - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([job]() { Work(*job); });
  }
  Work(*job);
  while (job->done.load(std::memory_order_acquire) < job->pieces) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptaxRmspropEncode, Encode,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("width")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("nb"));

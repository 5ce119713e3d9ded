// PTX-level intrinsics the kernels write as inline assembly, emulated. Included by cuda_emu.h.
// The kernels reach them through csrc/cuda/memory.cuh (cp.async) and csrc/cuda/mma.cuh
// (ldmatrix, mma.sync), which spell the PTX under nvcc and call these in the emulation build.
//
// cp.async (PTX ISA "cp.async", sm_80+): cp_async(dst, src, cp_size, src_size) copies
//   src_size bytes of global memory and zero-fills the rest of cp_size (4, 8 or 16) bytes of
//   shared memory. Asynchronous, as on the GPU: the source is read at issue, but the bytes
//   land in shared memory only when the issuing thread waits for the copy's group —
//   cp_async_commit() closes a group, cp_async_wait(n) ("cp.async.wait_group n") completes
//   the oldest committed groups until at most n are pending. Other threads see the data after
//   the usual barrier. So a kernel that reads a tile before waiting reads stale shared memory
//   (and ThreadSanitizer sees the late write race with it), as it would on a GPU. Copies
//   still pending when a thread leaves a block complete then. dst and src must be aligned to
//   cp_size (usage_error otherwise).
//
// ldmatrix (PTX "ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.shared.b16"): a warp
//   collective loading `num` 8×8 matrices of 16-bit elements. Lanes 8i..8i+7 give the
//   addresses of rows 0..7 of matrix i (each 16 bytes, 16-byte aligned; the other lanes'
//   addresses are ignored). Register i of lane l receives two elements of matrix i:
//     plain:  row l/4, columns 2(l%4) and 2(l%4)+1 (the lower column in the low 16 bits);
//     .trans: rows 2(l%4) and 2(l%4)+1 of column l/4 (the lower row in the low 16 bits),
//             i.e. the fragment of the transposed matrix.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 (PTX "Matrix fragments for
//   mma.m16n8k16 with floating point type"): D (16×8) = A (16×16) · B (16×8) + C, a warp
//   collective. With g = lane/4 and t = lane%4, each 32-bit register holding two 16-bit
//   elements (lower index in the low half):
//     A: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]
//     B: b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//     C, D: c0,c1 = C[g][2t], C[g][2t+1];  c2,c3 = C[g+8][2t], C[g+8][2t+1]
//   Every product of two 16-bit values is exact in fp32; the emulation sums them into C in
//   the fixed order k = 0..15 (a GPU's order differs: results agree to fp32 rounding).
//   Counts 2·16·8·16 FLOPs per warp (ck_emu::count_flops, by lane 0).
#pragma once

#include <cstdint>
#include <cstring>

namespace ck_emu {

// ---- cp.async --------------------------------------------------------------------------------
inline void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size) {
  detail::ThreadCtx& c = detail::ctx("cp.async");
  if (cp_size != 4 && cp_size != 8 && cp_size != 16)
    throw usage_error("cp.async: the copy size must be 4, 8 or 16 bytes");
  if (src_size > cp_size) throw usage_error("cp.async: src-size larger than the copy size");
  if (reinterpret_cast<std::uintptr_t>(dst) % cp_size != 0 ||
      (src_size > 0 && reinterpret_cast<std::uintptr_t>(src) % cp_size != 0))
    throw usage_error("cp.async: shared or global address not aligned to the copy size");
  detail::PendingCopy pc;
  pc.dst = dst;
  pc.size = cp_size;
  std::memset(pc.data, 0, sizeof pc.data);
  if (src_size > 0) std::memcpy(pc.data, src, src_size);  // the global read happens at issue
  c.cp_pending.push_back(pc);
}

inline void cp_async_commit() {
  detail::ThreadCtx& c = detail::ctx("cp.async.commit_group");
  c.cp_group_ends.push_back(c.cp_pending.size());
}

inline void cp_async_wait(unsigned pending_groups) {
  detail::ThreadCtx& c = detail::ctx("cp.async.wait_group");
  detail::complete_copies(c, static_cast<long>(pending_groups));
}

// ---- ldmatrix --------------------------------------------------------------------------------
inline void ldmatrix(unsigned* regs, int num, bool trans, const void* row_addr) {
  const char* what = trans ? "ldmatrix.trans" : "ldmatrix";
  if (num != 1 && num != 2 && num != 4) throw usage_error(std::string(what) + ": .x1, .x2 or .x4");
  detail::ThreadCtx& c0 = detail::ctx(what);
  if (c0.L->warps[c0.warp].lanes != 32)
    throw usage_error(std::string(what) + ": needs a complete warp of 32 threads");
  static_assert(32 * sizeof(const void*) <= detail::kExchangeBytes);
  const int n = num;
  const bool bad = detail::warp_exchange(
      what,
      [&](unsigned char* buf, const detail::ThreadCtx& tc) {
        std::memcpy(buf + tc.lane * sizeof(const void*), &row_addr, sizeof(const void*));
      },
      [&](const unsigned char* buf, const detail::ThreadCtx& tc) {
        auto row = [&](int src_lane) {
          const unsigned char* p;
          std::memcpy(&p, buf + src_lane * sizeof(const void*), sizeof(const void*));
          return p;
        };
        for (int l = 0; l < 8 * n; ++l)
          if (reinterpret_cast<std::uintptr_t>(row(l)) % 16 != 0) return true;
        const int l = static_cast<int>(tc.lane), g = l / 4, t = l % 4;
        for (int i = 0; i < n; ++i) {
          std::uint16_t lo, hi;
          if (!trans) {
            std::memcpy(&lo, row(8 * i + g) + 4 * t, 2);
            std::memcpy(&hi, row(8 * i + g) + 4 * t + 2, 2);
          } else {
            std::memcpy(&lo, row(8 * i + 2 * t) + 2 * g, 2);
            std::memcpy(&hi, row(8 * i + 2 * t + 1) + 2 * g, 2);
          }
          regs[i] = static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
        }
        return false;
      });
  if (bad) throw usage_error(std::string(what) + ": a row address is not 16-byte aligned");
}

// ---- mma.sync m16n8k16 ---------------------------------------------------------------------
namespace detail {
inline float b16_to_float(std::uint16_t bits, bool bf16) {
  if (bf16) return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
#if CK_EMU_HAVE_CUDA_HEADERS
  __half_raw r;
  r.x = bits;
  return __half2float(__half(r));
#else
  throw usage_error("mma.sync f16 needs the CUDA toolkit's cuda_fp16.h");
#endif
}
}  // namespace detail

// d = a·b + c for the lane's fragments (layouts above); bf16 selects the element type.
inline void mma_m16n8k16(float* d, const unsigned* a, const unsigned* b, const float* c, bool bf16) {
  const char* what = "mma.sync.m16n8k16";
  detail::ThreadCtx& c0 = detail::ctx(what);
  if (c0.L->warps[c0.warp].lanes != 32) throw usage_error("mma.sync: needs a complete warp of 32 threads");
  struct Frag {
    unsigned a[4], b[2];
  };
  static_assert(32 * sizeof(Frag) <= detail::kExchangeBytes);
  float out[4];
  detail::warp_exchange(
      what,
      [&](unsigned char* buf, const detail::ThreadCtx& tc) {
        Frag f;
        std::memcpy(f.a, a, sizeof f.a);
        std::memcpy(f.b, b, sizeof f.b);
        std::memcpy(buf + tc.lane * sizeof(Frag), &f, sizeof(Frag));
      },
      [&](const unsigned char* buf, const detail::ThreadCtx& tc) {
        auto frag = [&](int lane) {
          Frag f;
          std::memcpy(&f, buf + lane * sizeof(Frag), sizeof(Frag));
          return f;
        };
        auto half_of = [&](unsigned reg, int k) {
          return detail::b16_to_float(static_cast<std::uint16_t>(k % 2 ? reg >> 16 : reg & 0xffffu), bf16);
        };
        // A[r][k] and B[k][n] from the documented fragment layouts.
        auto A = [&](int r, int k) {
          const int lane = 4 * (r % 8) + (k % 8) / 2, reg = r / 8 + 2 * (k / 8);
          return half_of(frag(lane).a[reg], k);
        };
        auto B = [&](int k, int n) {
          const int lane = 4 * n + (k % 8) / 2, reg = k / 8;
          return half_of(frag(lane).b[reg], k);
        };
        const int g = static_cast<int>(tc.lane) / 4, t = static_cast<int>(tc.lane) % 4;
        for (int i = 0; i < 4; ++i) {
          const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
          float s = c[i];
          for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
          out[i] = s;
        }
        return 0;
      });
  for (int i = 0; i < 4; ++i) d[i] = out[i];
  if (c0.lane == 0) count_flops(2ull * 16 * 8 * 16);
}

}  // namespace ck_emu

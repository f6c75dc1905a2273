// FuseRank's fused training step for the rating model: two CPU ops that replace ~15 TF kernels a step.
//
// FuseRankCosineRows reads each example's user and anime rows once and returns |u|^2, |a|^2 and u.a; the
// tiny per-example head (Dense -> BatchNorm -> sigmoid cross-entropy) stays in TF on [batch] vectors.
// FuseRankRowwiseAdagrad then applies row-wise Adagrad to both tables in place, the same update as
// training/model.py's _RowwiseAdagrad: for every distinct row r of a side,
//   g_r   = sum_i c_i other_i - (sum_i d_i) w_r          (other_i: the other side's row, before the step)
//   acc_r += sum_i sq_i;  w_r -= lr / sqrt(acc_r + eps) * g_r
// The step is memory-bound (a user row is 512 bytes of a 160 MB table), so it makes one pass over the
// examples in user order: a user's run of examples sums its gradient in a local buffer and writes the row
// once, while the anime side's sums go to a small scratch (popular anime stay in cache) applied at the
// end, when no old row is needed any more. Two threads take halves of the batch split at a user boundary.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>

#include <sys/mman.h>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/util/work_sharder.h"

namespace fuserank {

using namespace tensorflow;  // NOLINT

REGISTER_OP("FuseRankCosineRows")
    .Input("user_table: resource")
    .Input("anime_table: resource")
    .Input("users: int32")
    .Input("anime: int32")
    .Output("uu: float")
    .Output("aa: float")
    .Output("ua: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      for (int i = 0; i < 3; ++i) c->set_output(i, c->input(2));
      return OkStatus();
    });

REGISTER_OP("FuseRankRowwiseAdagrad")
    .Input("user_table: resource")
    .Input("user_accumulator: resource")
    .Input("anime_table: resource")
    .Input("anime_accumulator: resource")
    .Input("users: int32")
    .Input("anime: int32")
    .Input("c: float")
    .Input("d_user: float")
    .Input("d_anime: float")
    .Input("sq_user: float")
    .Input("sq_anime: float")
    .Input("lr: float")
    .Attr("epsilon: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return OkStatus(); });

namespace {

constexpr int64_t kHugePage = int64_t{2} << 20;

// Asks for transparent huge pages on [p, p + bytes) before it is first touched: a user table is ~160 MB
// read at random rows, and with 4 KB pages nearly every row costs a TLB miss (a page walk).
void AdviseHugePages(void* p, int64_t bytes) {
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~uintptr_t(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// The variable's buffer, writable in place. It is replaced by a copy (1) if a read still shares it
// (copy-on-write, as TF's own scatter kernels do, so a tensor read before the step never changes under its
// reader) and (2) once, for a big table, to move it onto huge pages; `owned` remembers the buffers made here.
Status WritableTable(OpKernelContext* ctx, Var* var, std::set<const void*>* owned, float** data, int64_t* rows,
                     int64_t* dim) {
  Tensor* t = var->tensor();
  if (t->dtype() != DT_FLOAT || t->dims() < 1 || t->dims() > 2)
    return errors::InvalidArgument("expected a float32 table of rank 1 or 2, got ", t->DebugString());
  const bool big = t->TotalBytes() >= 8 * kHugePage;
  if (!t->RefCountIsOne() || (big && !owned->count(t->tensor_data().data()))) {
    Tensor copy;
    AllocatorAttributes attr;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_FLOAT, t->shape(), &copy, attr));
    if (big) AdviseHugePages(copy.flat<float>().data(), copy.TotalBytes());
    std::memcpy(copy.flat<float>().data(), t->flat<float>().data(), t->TotalBytes());
    owned->erase(t->tensor_data().data());
    *t = copy;
    owned->insert(t->tensor_data().data());
  }
  *data = t->flat<float>().data();
  *rows = t->dim_size(0);
  *dim = t->dims() == 2 ? t->dim_size(1) : 1;
  return OkStatus();
}

Status CheckIds(const Tensor& ids, int64_t rows, const char* name) {
  auto v = ids.flat<int32>();
  for (int64_t i = 0; i < v.size(); ++i)
    if (v(i) < 0 || v(i) >= rows)
      return errors::InvalidArgument(name, "[", i, "] = ", v(i), " is outside the table's ", rows, " rows");
  return OkStatus();
}

typedef float v4 __attribute__((vector_size(16)));

inline v4 Load(const float* p) {
  v4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float Sum(v4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// |u|^2, |a|^2, u.a in one pass over both rows (independent accumulators: the sums vectorise without
// -ffast-math reassociating anything the caller relies on).
inline void Dots(const float* u, const float* a, int64_t n, float* uu, float* aa, float* ua) {
  int64_t j = 0;
  v4 su = {0, 0, 0, 0}, sa = su, sx = su, tu = su, ta = su, tx = su;
  for (; j + 8 <= n; j += 8) {
    const v4 u0 = Load(u + j), u1 = Load(u + j + 4), a0 = Load(a + j), a1 = Load(a + j + 4);
    su += u0 * u0; sa += a0 * a0; sx += u0 * a0;
    tu += u1 * u1; ta += a1 * a1; tx += u1 * a1;
  }
  float fu = Sum(su + tu), fa = Sum(sa + ta), fx = Sum(sx + tx);
  for (; j < n; ++j) { fu += u[j] * u[j]; fa += a[j] * a[j]; fx += u[j] * a[j]; }
  *uu = fu; *aa = fa; *ua = fx;
}

inline void Prefetch(const float* row, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(row + j);
}

constexpr int64_t kAhead = 8;

}  // namespace

class CosineRowsOp : public OpKernel {
 public:
  explicit CosineRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    core::RefCountPtr<Var> user_var, anime_var;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &user_var));
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 1), &anime_var));
    const Tensor& users = ctx->input(2);
    const Tensor& anime = ctx->input(3);
    OP_REQUIRES(ctx, users.shape() == anime.shape() && users.dims() == 1,
                errors::InvalidArgument("users and anime must be vectors of one length"));
    tf_shared_lock lu(*user_var->mu());
    tf_shared_lock la(*anime_var->mu());
    const Tensor& ut = *user_var->tensor();
    const Tensor& at = *anime_var->tensor();
    OP_REQUIRES(ctx, ut.dtype() == DT_FLOAT && at.dtype() == DT_FLOAT && ut.dims() == 2 && at.dims() == 2 &&
                         ut.dim_size(1) == at.dim_size(1),
                errors::InvalidArgument("expected two float32 [rows, dim] tables of one dim"));
    OP_REQUIRES_OK(ctx, CheckIds(users, ut.dim_size(0), "users"));
    OP_REQUIRES_OK(ctx, CheckIds(anime, at.dim_size(0), "anime"));
    Tensor *uu, *aa, *ua;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, users.shape(), &uu));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, users.shape(), &aa));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, users.shape(), &ua));
    const int64_t dim = ut.dim_size(1);
    const float* U = ut.flat<float>().data();
    const float* A = at.flat<float>().data();
    const int32* uid = users.flat<int32>().data();
    const int32* aid = anime.flat<int32>().data();
    float *puu = uu->flat<float>().data(), *paa = aa->flat<float>().data(), *pua = ua->flat<float>().data();
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kAhead < end) {
          Prefetch(U + int64_t{uid[i + kAhead]} * dim, dim);
          Prefetch(A + int64_t{aid[i + kAhead]} * dim, dim);
        }
        Dots(U + int64_t{uid[i]} * dim, A + int64_t{aid[i]} * dim, dim, puu + i, paa + i, pua + i);
      }
    };
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(pool->num_threads, pool->workers, users.NumElements(), 40 * dim, work);
  }
};

class RowwiseAdagradOp : public OpKernel {
 public:
  explicit RowwiseAdagradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    core::RefCountPtr<Var> vars[4];
    for (int i = 0; i < 4; ++i) OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, i), &vars[i]));
    const Tensor& users = ctx->input(4);
    const Tensor& anime = ctx->input(5);
    const int64_t n = users.NumElements();
    for (int i = 5; i < 11; ++i)
      OP_REQUIRES(ctx, ctx->input(i).dims() == 1 && ctx->input(i).NumElements() == n,
                  errors::InvalidArgument("input ", i, " must be a vector of the batch's length ", n));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(11).shape()),
                errors::InvalidArgument("lr must be a scalar, got shape ", ctx->input(11).shape().DebugString()));
    for (int i = 0; i < 4; ++i)
      for (int j = i + 1; j < 4; ++j)
        OP_REQUIRES(ctx, vars[i].get() != vars[j].get(),
                    errors::InvalidArgument("the two tables and two accumulators must be four variables"));
    mutex_lock guard(mu_);
    mutex_lock l0(*vars[0]->mu()), l1(*vars[1]->mu()), l2(*vars[2]->mu()), l3(*vars[3]->mu());
    Batch b;
    int64_t rows[4], dims[4];
    for (int v = 0; v < 4; ++v) OP_REQUIRES_OK(ctx, WritableTable(ctx, vars[v].get(), &owned_, &b.table[v], &rows[v], &dims[v]));
    OP_REQUIRES(ctx, dims[0] == dims[2] && dims[1] == 1 && dims[3] == 1 && rows[1] == rows[0] && rows[3] == rows[2],
                errors::InvalidArgument("expected two [rows, dim] tables of one dim and one accumulator entry a row"));
    OP_REQUIRES_OK(ctx, CheckIds(users, rows[0], "users"));
    OP_REQUIRES_OK(ctx, CheckIds(anime, rows[2], "anime"));
    b.dim = dims[0];
    b.user = users.flat<int32>().data();
    b.anime = anime.flat<int32>().data();
    for (int k = 0; k < 5; ++k) b.in[k] = ctx->input(6 + k).flat<float>().data();
    b.lr = ctx->input(11).scalar<float>()();
    b.eps = epsilon_;

    // user order (batches come sorted by user: then no sort), split in two at a user boundary
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    if (!std::is_sorted(b.user, b.user + n))
      std::stable_sort(order_.begin(), order_.end(), [&](int32 x, int32 y) { return b.user[x] < b.user[y]; });
    int64_t mid = n / 2;
    while (mid > 0 && mid < n && b.user[order_[mid]] == b.user[order_[mid - 1]]) ++mid;
    const int64_t bounds[3] = {0, mid, n};
    for (auto& s : scratch_) s.Reset(rows[2], n, b.dim);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(2, n * b.dim * 8, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) Pass(b, order_.data() + bounds[t], bounds[t + 1] - bounds[t], &scratch_[t]);
    });
    ApplyAnime(b, pool);
  }

 private:
  struct Batch {
    float* table[4];  // user table, user accumulator, anime table, anime accumulator
    int64_t dim;
    const int32 *user, *anime;
    const float* in[5];  // c, d_user, d_anime, sq_user, sq_anime
    float lr, eps;
  };
  // one thread's sums for the anime rows its examples touched
  struct Scratch {
    std::vector<int32> slot, rows;
    std::vector<float> g, d, sq;
    void Reset(int64_t table_rows, int64_t n, int64_t dim) {
      if (static_cast<int64_t>(slot.size()) < table_rows) slot.assign(table_rows, -1);
      if (static_cast<int64_t>(g.size()) < n * dim) g.resize(n * dim);
      d.resize(n);
      sq.resize(n);
      rows.clear();
    }
    int32 Slot(int32 row, int64_t dim) {
      int32 k = slot[row];
      if (k < 0) {
        k = slot[row] = static_cast<int32>(rows.size());
        rows.push_back(row);
        std::memset(&g[k * dim], 0, dim * sizeof(float));
        d[k] = sq[k] = 0.f;
      }
      return k;
    }
  };

  static void Step(float* w, const float* old, const float* __restrict g, float* acc,
                   float sq, float d, float lr, float eps, int64_t dim) {
    const float a = *acc + sq;
    *acc = a;
    const float coef = lr / std::sqrt(a + eps);
    const float keep = 1.f + coef * d;
    for (int64_t j = 0; j < dim; ++j) w[j] = old[j] * keep - coef * g[j];
  }

  // examples idx[0..m) in user order: each user's run sums into a local buffer and writes its row once
  static void Pass(const Batch& b, const int32* idx, int64_t m, Scratch* s) {
    const int64_t dim = b.dim;
    float *U = b.table[0], *A = b.table[2];
    const float *c = b.in[0], *du = b.in[1], *da = b.in[2], *squ = b.in[3], *sqa = b.in[4];
    std::vector<float> old(dim), gu(dim);
    for (int64_t p = 0; p < m;) {
      const int32 user = b.user[idx[p]];
      float* row = U + int64_t{user} * dim;
      std::memcpy(old.data(), row, dim * sizeof(float));
      std::fill(gu.begin(), gu.end(), 0.f);
      float d_sum = 0.f, sq_sum = 0.f;
      for (; p < m && b.user[idx[p]] == user; ++p) {
        if (p + kAhead < m) {
          Prefetch(A + int64_t{b.anime[idx[p + kAhead]]} * dim, dim);
          Prefetch(U + int64_t{b.user[idx[p + kAhead]]} * dim, dim);
        }
        const int32 i = idx[p];
        const float* __restrict a = A + int64_t{b.anime[i]} * dim;
        const int32 k = s->Slot(b.anime[i], dim);
        float* __restrict ga = &s->g[k * dim];
        const float ci = c[i];
        const float* __restrict u = old.data();
        float* __restrict g = gu.data();
        for (int64_t j = 0; j < dim; ++j) {
          g[j] += ci * a[j];
          ga[j] += ci * u[j];
        }
        d_sum += du[i];
        sq_sum += squ[i];
        s->d[k] += da[i];
        s->sq[k] += sqa[i];
      }
      Step(row, old.data(), gu.data(), b.table[1] + user, sq_sum, d_sum, b.lr, b.eps, dim);
    }
  }

  // the anime rows, once every old row has been read: each thread takes the rows of one parity and adds
  // the two threads' sums for them
  void ApplyAnime(const Batch& b, thread::ThreadPool* pool) {
    const int64_t dim = b.dim;
    pool->ParallelFor(2, b.dim * 4 * (scratch_[0].rows.size() + scratch_[1].rows.size()),
                      [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        for (int own = 0; own < 2; ++own) {
          Scratch &s = scratch_[own], &o = scratch_[1 - own];
          for (size_t k = 0; k < s.rows.size(); ++k) {
            const int32 row = s.rows[k];
            if ((row & 1) != t) continue;
            const int32 ko = o.slot[row];
            if (own == 1 && ko >= 0) continue;       // done from thread 0's scratch
            float* g = &s.g[k * dim];
            float d = s.d[k], sq = s.sq[k];
            if (ko >= 0) {
              const float* go = &o.g[int64_t{ko} * dim];
              for (int64_t j = 0; j < dim; ++j) g[j] += go[j];
              d += o.d[ko];
              sq += o.sq[ko];
            }
            float* w = b.table[2] + int64_t{row} * dim;
            Step(w, w, g, b.table[3] + row, sq, d, b.lr, b.eps, dim);
          }
        }
      }
    });
    for (auto& s : scratch_)
      for (int32 row : s.rows) s.slot[row] = -1;
  }

  float epsilon_;
  mutex mu_;
  std::vector<int32> order_;
  Scratch scratch_[2];
  std::set<const void*> owned_;
};

REGISTER_KERNEL_BUILDER(Name("FuseRankCosineRows").Device(DEVICE_CPU), CosineRowsOp);
REGISTER_KERNEL_BUILDER(Name("FuseRankRowwiseAdagrad").Device(DEVICE_CPU), RowwiseAdagradOp);

}  // namespace fuserank

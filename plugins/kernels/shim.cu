// bertrt's C entry points into the TensorRT OSS BERT plugin kernels, compiled against a TensorRT OSS checkout
// the user points to (no NVIDIA code lives in bertrt). Each function does what the plugin's enqueue does for
// one node: the same launch wrapper, the same runner class, the same tensor descriptions. Pointers are device
// pointers (PyTorch tensors' data_ptr()); every function returns 0 on success, else an error code, and
// bertrt_last_error() says why.
#include <cuda_fp16.h>
#include <cstdio>
#include <cuda_runtime.h>
#include <exception>
#include <memory>
#include <string>

#include "NvInfer.h"
#include "NvInferPlugin.h"
#include "common/bertCommon.h"
#include "bertQKVToContextPlugin/mhaRunner.h"
#include "common/cublasWrapper.h"
#include "embLayerNormPlugin/embLayerNormPlugin.h"
#include "skipLayerNormPlugin/skipLayerNormInt8InterleavedPlugin.h"
#include "skipLayerNormPlugin/skipLayerNormPlugin.h"

using namespace nvinfer1;
using namespace nvinfer1::plugin;
using namespace nvinfer1::plugin::bert;

namespace nvinfer1
{
namespace plugin
{
namespace bert
{
// Declared in the var-seqlen plugin's header, which drags in the IPluginV3 classes; the signature is the .cu's.
template <typename T>
int32_t embSkipLayerNormHFace(cudaStream_t stream, int32_t ld, int32_t B, int32_t S, int32_t const* inputIds,
    int32_t const* tokenIds, int32_t const* cuSeqlens, float const* beta, float const* gamma, T const* wordEmb,
    T const* posEmb, T const* tokEmb, int32_t const wordSize, int32_t const tokSize, T* output);
} // namespace bert
} // namespace plugin
} // namespace nvinfer1

static std::string gLastError;

namespace
{
// TensorRT's libnvinfer provides getLogger(); without it the plugins' failure reports go to stderr.
class StderrLogger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            fprintf(stderr, "[bertrt kernels] %s\n", msg);
        }
    }
};
} // namespace

extern "C" TENSORRTAPI nvinfer1::ILogger* getLogger() noexcept
{
    static StderrLogger logger;
    return &logger;
}

#define GUARD(...)                                                                                                     \
    try                                                                                                                \
    {                                                                                                                  \
        __VA_ARGS__;                                                                                                        \
        cudaError_t e = cudaGetLastError();                                                                            \
        if (e != cudaSuccess)                                                                                          \
        {                                                                                                              \
            gLastError = cudaGetErrorString(e);                                                                        \
            return static_cast<int>(e);                                                                                \
        }                                                                                                              \
        return 0;                                                                                                      \
    }                                                                                                                  \
    catch (std::exception const& ex)                                                                                   \
    {                                                                                                                  \
        gLastError = ex.what();                                                                                        \
        return -1;                                                                                                     \
    }

static cudaStream_t st(void* s)
{
    return static_cast<cudaStream_t>(s);
}

extern "C" {

char const* bertrt_last_error()
{
    return gLastError.c_str();
}

int bertrt_mask_packed_size(int sm, int type_id, int S)
{
    return static_cast<int>(getMHAMaskPackedSize(sm, static_cast<DataType>(type_id), S));
}

// ------------------------------------------------------------------ SkipLayerNorm (non-interleaved, v1/v2/v5/v6)
int bertrt_skip_ln(int type_id, int ld, int n, void const* in, void const* skip, void const* beta, void const* gamma,
    void* out, void const* bias, float dq_in, float dq_skip, float q_out, void* stream)
{
    GUARD({
        int32_t status = 0;
        if (type_id == 0)
        {
            auto f = [&](auto hasBias) {
                return computeSkipLayerNorm<float, decltype(hasBias)::value>(st(stream), ld, n,
                    static_cast<float const*>(in), static_cast<float const*>(skip), static_cast<float const*>(beta),
                    static_cast<float const*>(gamma), static_cast<float*>(out), static_cast<float const*>(bias));
            };
            status = bias ? f(std::true_type{}) : f(std::false_type{});
        }
        else if (type_id == 1)
        {
            auto f = [&](auto hasBias) {
                return computeSkipLayerNorm<half, decltype(hasBias)::value>(st(stream), ld, n,
                    static_cast<half const*>(in), static_cast<half const*>(skip), static_cast<half const*>(beta),
                    static_cast<half const*>(gamma), static_cast<half*>(out), static_cast<half const*>(bias));
            };
            status = bias ? f(std::true_type{}) : f(std::false_type{});
        }
        else
        {
            auto f = [&](auto hasBias) {
                return computeSkipLayerNormDQQ<decltype(hasBias)::value>(st(stream), ld, n,
                    static_cast<int8_t const*>(in), static_cast<int8_t const*>(skip), static_cast<__half const*>(beta),
                    static_cast<__half const*>(gamma), static_cast<int8_t*>(out), static_cast<__half const*>(bias),
                    dq_in, dq_skip, q_out);
            };
            status = bias ? f(std::true_type{}) : f(std::false_type{});
        }
        if (status != 0)
        {
            gLastError = "SkipLayerNorm launch failed";
            return status;
        }
    })
}

// SkipLayerNorm INT8 interleaved HFace (v3/v7), input [1, ld, total, 1] CHW32: the plugin's enqueue takes the
// small kernel below 4096 tokens.
int bertrt_skip_ln_il(int ld, int total, void const* in, void const* skip, void const* beta, void const* gamma,
    void* out, float dq_in, float dq_skip, float q_out, void* stream)
{
    GUARD({
        auto fn = total < 4096 ? launch_small_hface : launch_large_hface;
        int32_t status = fn(st(stream), ld, total, static_cast<int8_t const*>(in), static_cast<int8_t const*>(skip),
            static_cast<half const*>(beta), static_cast<half const*>(gamma), static_cast<int8_t*>(out), dq_in, dq_skip,
            q_out);
        if (status != 0)
        {
            gLastError = "SkipLayerNorm INT8 interleaved launch failed";
            return status;
        }
    })
}

// ------------------------------------------------------------------ EmbLayerNorm fixed (v1/v6)
int bertrt_emb_ln(int fp16, int ld, int B, int S, int const* ids, int const* seg, float const* beta,
    float const* gamma, void const* word, void const* pos, void const* tok, int word_size, int tok_size, void* out,
    void* stream)
{
    GUARD({
        int32_t status = fp16 ? embSkipLayerNorm<half>(st(stream), ld, B, S, ids, seg, beta, gamma,
                                    static_cast<half const*>(word), static_cast<half const*>(pos),
                                    static_cast<half const*>(tok), word_size, tok_size, static_cast<half*>(out))
                              : embSkipLayerNorm<float>(st(stream), ld, B, S, ids, seg, beta, gamma,
                                  static_cast<float const*>(word), static_cast<float const*>(pos),
                                  static_cast<float const*>(tok), word_size, tok_size, static_cast<float*>(out));
        if (status != 0)
        {
            gLastError = "EmbLayerNorm launch failed";
            return status;
        }
    })
}

// EmbLayerNorm's second output, as its enqueue writes it: the packed fused-MHA mask when the downstream QKV
// runs fused (getMHAMaskPackedSize != 1, or full_mask), else maskIdx.
int bertrt_emb_mask(int sm, int mha_type_id, int full_mask, int B, int S, int const* mask, void* out, void* stream)
{
    GUARD({
        int32_t status;
        if (full_mask || unfusedMaskSize != getMHAMaskPackedSize(sm, static_cast<DataType>(mha_type_id), S))
        {
            size_t warps_m = 0, warps_n = 0, warps_k = 1;
            if (S == 64 || S == 96 || S == 128)
            {
                warps_m = 2;
                warps_n = 2;
            }
            else if (S == 384)
            {
                warps_m = 1;
                warps_n = 8;
            }
            status = convertMask(S, B, warps_m, warps_n, warps_k, mask, static_cast<uint32_t*>(out), st(stream));
        }
        else
        {
            status = computeMaskIdx(st(stream), S, B, mask, static_cast<int32_t*>(out));
        }
        if (status != 0)
        {
            gLastError = "EmbLayerNorm mask launch failed";
            return status;
        }
    })
}

// ------------------------------------------------------------------ EmbLayerNorm var-seqlen HFace (v2/v4)
int bertrt_emb_ln_hface(int fp16, int ld, int B, int S, int const* ids, int const* seg, int const* cu,
    float const* beta, float const* gamma, void const* word, void const* pos, void const* tok, int word_size,
    int tok_size, void* out, void* stream)
{
    GUARD({
        int32_t status = fp16
            ? embSkipLayerNormHFace<half>(st(stream), ld, B, S, ids, seg, cu, beta, gamma,
                static_cast<half const*>(word), static_cast<half const*>(pos), static_cast<half const*>(tok), word_size,
                tok_size, static_cast<half*>(out))
            : embSkipLayerNormHFace<float>(st(stream), ld, B, S, ids, seg, cu, beta, gamma,
                static_cast<float const*>(word), static_cast<float const*>(pos), static_cast<float const*>(tok),
                word_size, tok_size, static_cast<float*>(out));
        if (status != 0)
        {
            gLastError = "EmbLayerNorm var-seqlen launch failed";
            return status;
        }
    })
}

// ------------------------------------------------------------------ QKVToContext runners
// kind: 0 UnfusedMHARunner, 1 FusedMHARunnerFP16, 2 FusedMHARunnerInt8, 3 FusedMHARunnerFP16v2,
// 4 FusedMHARunnerInt8v2 (the classes the plugins' createMHARunner makes).
void* bertrt_mha_create(int kind, int type_id, int num_heads, int sm, float dq_probs, int use_int8_scale_max)
{
    try
    {
        switch (kind)
        {
        case 0: return new UnfusedMHARunner(static_cast<DataType>(type_id), num_heads, sm);
        case 1: return new FusedMHARunnerFP16(num_heads, sm);
        case 2: return new FusedMHARunnerInt8(num_heads, sm, dq_probs);
        case 3: return new FusedMHARunnerFP16v2(num_heads, sm);
        case 4: return new FusedMHARunnerInt8v2(num_heads, sm, dq_probs, use_int8_scale_max != 0);
        default: gLastError = "unknown runner kind"; return nullptr;
        }
    }
    catch (std::exception const& ex)
    {
        gLastError = ex.what();
        return nullptr;
    }
}

void bertrt_mha_destroy(void* runner)
{
    delete static_cast<MHARunner*>(runner);
}

int bertrt_mha_is_valid(void* runner, int head_size, int S)
{
    return static_cast<MHARunner*>(runner)->isValid(head_size, S) ? 1 : 0;
}

int bertrt_mha_setup(void* runner, int S, int B, int head_size)
{
    GUARD(static_cast<MHARunner*>(runner)->setup(S, B, head_size))
}

long long bertrt_mha_workspace(void* runner)
{
    return static_cast<long long>(static_cast<MHARunner*>(runner)->getWorkspaceSize());
}

static cublasHandle_t cublasHandle()
{
    // The plugin gets its handle from TensorRT's shared CublasWrapper resource; one per process here.
    static std::shared_ptr<CublasWrapper> wrapper = std::make_shared<CublasWrapper>(true);
    return wrapper->getCublasHandle();
}

static PluginTensorDesc desc(int type_id, int nb, int const* dims, float scale)
{
    PluginTensorDesc d{};
    d.type = static_cast<DataType>(type_id);
    d.format = type_id == 2 ? TensorFormat::kCHW32 : TensorFormat::kLINEAR;
    d.scale = scale;
    d.dims.nbDims = nb;
    for (int i = 0; i < nb; ++i)
    {
        d.dims.d[i] = dims[i];
    }
    return d;
}

// Fixed length (v1/v4 and v2/v5 with var_seqlen 0): QKVToContextPluginDynamic::enqueue's runner->run call.
// qkv [S, B, 3E, 1, 1], out [S, B, E, 1, 1].
int bertrt_mha_run_fixed(void* runner, int type_id, int S, int B, int E, float s_qkv, float s_ctx, void const* qkv,
    void const* mask, void* out, void* workspace, void* stream)
{
    int in_dims[5] = {S, B, 3 * E, 1, 1};
    int out_dims[5] = {S, B, E, 1, 1};
    PluginTensorDesc in = desc(type_id, 5, in_dims, s_qkv);
    PluginTensorDesc o = desc(type_id, 5, out_dims, s_ctx);
    GUARD(static_cast<MHARunner*>(runner)->run(in, o, qkv, mask, out, workspace, st(stream), cublasHandle()))
}

// Var-seqlen (v2/v5 with var_seqlen 1), head size 64: the runner->run call of QKVToContextVarSeqlenPlugin::enqueue
// after it picked the S bucket and called setup(S, B, 64). qkv [T, 3E, 1, 1], out [T, E, 1, 1].
int bertrt_mha_run_varseqlen(void* runner, int type_id, int T, int E, int B, int max_s, float s_qkv, float s_ctx,
    void const* qkv, void const* mask, int const* cu, void const* max_seqlen, void* out, void* workspace, void* stream)
{
    int in_dims[4] = {T, 3 * E, 1, 1};
    int out_dims[4] = {T, E, 1, 1};
    int mask_dims[1] = {1};
    int cu_dims[1] = {B + 1};
    int ms_dims[1] = {max_s};
    PluginTensorDesc ins[4] = {desc(type_id, 4, in_dims, s_qkv), desc(3, 1, mask_dims, 1.F),
        desc(3, 1, cu_dims, 1.F), desc(3, 1, ms_dims, 1.F)};
    ins[1].format = ins[2].format = ins[3].format = TensorFormat::kLINEAR;
    PluginTensorDesc o = desc(type_id, 4, out_dims, s_ctx);
    void const* inputs[4] = {qkv, mask, cu, max_seqlen};
    void* outputs[1] = {out};
    GUARD(static_cast<MHARunner*>(runner)->run(ins, &o, inputs, outputs, workspace, st(stream), cublasHandle()))
}

} // extern "C"

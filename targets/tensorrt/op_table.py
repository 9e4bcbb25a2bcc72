"""What TensorRT's ONNX parser accepts: the onnx-tensorrt 10.15 operator matrix (docs/operators.md, the
newest published; no 11.x matrix exists yet), reduced to what a lint needs, corrected where the real
parser of TensorRT for RTX 1.7.1.116 disagreed with it (tests/targets/tensorrt/lint_corpus.py and the
op x dtype sweep in docs/tensorrt.md; `RTX_*` below are the differences of that flavour only).

Types are the matrix's names: FP32, FP16, BF16, INT32, INT64, BOOL, UINT8, INT8, FP8, FP4, INT4.
Ops marked N in the matrix are simply absent from SUPPORTED_OPS.
"""

from __future__ import annotations

OPSET_MIN = 9
OPSET_MAX = 24  # TensorRT 10.15; the 11.x bound is unpublished (likely >= 24)

_F = ("FP32", "FP16", "BF16")
_FI = _F + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)

SUPPORTED_OPS: dict[str, tuple[str, ...]] = {
    **{op: _F for op in (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil",
        "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "Dropout", "Einsum", "Elu", "Erf",
        "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization",
        "GRU", "HardSigmoid", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf",
        "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN", "LSTM", "LpNormalization", "LpPool",
        "MatMul", "MaxPool", "MeanVarianceNormalization", "ParametricSoftplus", "PRelu", "QuantizeLinear",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal",
        "Resize", "RMSNormalization", "RNN", "RotaryEmbedding", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin",
        "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample")},
    **{op: _FI for op in (
        "Abs", "Add", "ArgMax", "ArgMin", "CumSum", "DepthToSpace", "Div", "Greater", "GreaterOrEqual",
        "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Scatter", "ScatterElements", "ScatterND",
        "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK")},
    **{op: _FIB for op in (
        "Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "If",
        "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice", "Split", "Squeeze", "Tile",
        "Transpose", "Trilu", "Unsqueeze", "Where")},
    **{op: ("BOOL",) for op in ("And", "Not", "Or", "Xor")},
    # measured with RTX's parser where the 10.15 matrix was wrong: Resize is supported (absent from the
    # matrix), CumSum takes INT32/INT64, Equal takes BOOL, Relu rejects INT32, HardSwish rejects BF16
    "Equal": _FIB, "Relu": ("FP32", "FP16", "BF16", "INT64"), "HardSwish": ("FP32", "FP16"),
    "Attention": _F + ("INT8", "FP8"),
    "BlackmanWindow": ("FP32", "FP16"), "HammingWindow": ("FP32", "FP16"), "HannWindow": ("FP32", "FP16"),
    "Cast": _FIB + ("UINT8",), "CastLike": _FIB + ("UINT8",),
    "Constant": _FIB + ("FP8", "FP4", "INT4"), "ConstantOfShape": _FIB + ("FP8", "FP4", "INT4"),
    "DeformConv": ("FP32", "FP16"), "GridSample": ("FP32", "FP16"), "Mish": ("FP32", "FP16"),
    "NonMaxSuppression": ("FP32", "FP16"), "NonZero": ("FP32", "FP16"), "RoiAlign": ("FP32", "FP16"),
    "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"),
    "Gelu": _FI + ("INT8",), "Mean": _FI + ("FP8",), "STFT": ("FP32",),
    "TensorScatter": _F + ("INT32",),
}

# TensorRT for RTX 1.7 differs from the full TensorRT matrix: NonZero needs a plugin the wheel lacks;
# DeformConv, ImageScaler and ParametricSoftplus have no importer; Swish (opset 24) has one.
RTX_UNSUPPORTED = ("NonZero", "DeformConv", "ImageScaler", "ParametricSoftplus")
RTX_EXTRA: dict[str, tuple[str, ...]] = {"Swish": ("FP32", "FP16", "BF16")}

# The input whose type the matrix's "Supported Types" describes, where it is not input 0
# (None: the first output, for ops whose inputs are shapes or whose inputs are optional).
TYPED_INPUT: dict[str, int | None] = {
    "Where": 1, "Constant": None, "ConstantOfShape": None, "RandomNormal": None, "RandomUniform": None,
}

# (op, input index, first opset where it is an input, what it is, kind): inputs whose value TensorRT must
# know when it builds. kind "weights": the parser wants an initializer or a Constant node's output (through
# Cast/Identity only: RTX rejected Reduce axes made by Neg, Add, Concat or Unsqueeze of constants, and
# axes computed from shapes). kind "shape": a shape tensor, fine when computed from constants and tensor
# *shapes* (Shape -> Gather/Div/...), but not from a graph input's values (the parser then fails, or the
# build asks for profile values that build-engine never gives).
CONSTANT_INPUTS: tuple[tuple[str, int, int, str, str], ...] = (
    *((op, 1, 18, "axes", "weights") for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSumSquare")),
    ("ReduceSum", 1, 13, "axes", "weights"),
    ("Dropout", 2, 12, "training_mode", "weights"),
    ("Squeeze", 1, 13, "axes", "shape"),
    ("Unsqueeze", 1, 13, "axes", "shape"),
    ("CumSum", 1, 11, "axis", "shape"),
    ("OneHot", 1, 9, "depth", "shape"),
    *(("Slice", index, 10, what, "shape") for index, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))),
)

# Where the matrix allows only the first output.
SINGLE_OUTPUT_OPS = ("LayerNormalization", "MaxPool")

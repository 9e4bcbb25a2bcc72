"""What TensorRT's ONNX parser accepts: the onnx-tensorrt 10.15 operator matrix (docs/operators.md, the
newest published; no 11.x matrix exists yet), reduced to what a lint needs.

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
        "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf",
        "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization",
        "GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf",
        "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN", "LSTM", "LpNormalization", "LpPool",
        "MatMul", "MaxPool", "MeanVarianceNormalization", "ParametricSoftplus", "PRelu", "QuantizeLinear",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal",
        "RMSNormalization", "RNN", "RotaryEmbedding", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin",
        "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample")},
    **{op: _FI for op in (
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual",
        "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Scatter", "ScatterElements", "ScatterND",
        "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK")},
    **{op: _FIB for op in (
        "Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "If",
        "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice", "Split", "Squeeze", "Tile",
        "Transpose", "Trilu", "Unsqueeze", "Where")},
    **{op: ("BOOL",) for op in ("And", "Not", "Or", "Xor")},
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

# The input whose type the matrix's "Supported Types" describes, where it is not input 0
# (None: the first output, for ops whose inputs are shapes or whose inputs are optional).
TYPED_INPUT: dict[str, int | None] = {
    "Where": 1, "Constant": None, "ConstantOfShape": None, "RandomNormal": None, "RandomUniform": None,
}

# (op, input index, first opset where it is an input, what it is, level): inputs the parser needs as
# build-time constants (an initializer or a Constant node's output).
CONSTANT_INPUTS: tuple[tuple[str, int, int, str, str], ...] = (
    *((op, 1, 18, "axes", "error") for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSumSquare")),
    ("ReduceSum", 1, 13, "axes", "error"),
    ("Squeeze", 1, 13, "axes", "error"),
    ("Unsqueeze", 1, 13, "axes", "error"),
    ("CumSum", 1, 11, "axis", "error"),
    ("OneHot", 1, 9, "depth", "error"),
    ("Dropout", 2, 12, "training_mode", "error"),
    ("Slice", 3, 10, "axes", "warning"),  # required by TensorRT 10.0, no longer listed by 10.15
)

# Where the matrix allows only the first output.
SINGLE_OUTPUT_OPS = ("LayerNormalization", "MaxPool")

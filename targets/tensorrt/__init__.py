"""TensorRT engines from rwkv-deploy packages: a parser compatibility lint, optimization profiles, the
build configuration recorded as plain data, and the engine build itself.

TensorRT is imported only when asked for (`environment.load_tensorrt`, called by `builder.build_engine`
and the runtime backend), so every other part runs, and is tested, on machines without TensorRT or a GPU.
"""

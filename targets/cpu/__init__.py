"""The CPU target: from a finished package, graphs for ONNX Runtime's CPU provider that use rwkv-deploy's own
operators (runtime/native/, a C++ custom-op library), while the portable graphs stay for every other runtime."""

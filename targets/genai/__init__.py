"""A folder that ONNX Runtime GenAI (onnxruntime-genai) loads as it is, made from a finished package."""

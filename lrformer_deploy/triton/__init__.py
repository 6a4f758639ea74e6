"""Serving on NVIDIA Triton Inference Server.

- `repository`: write a complete, checked Triton model repository for an exported model
  (`lrformer-triton`, `lrformer-export --triton`): the ONNX graph / TensorRT plan with explicit configs,
  and a `NAME_frames` Python-backend model that takes camera frames and returns masks.
- `frames`: the frame-in, mask-out request handling shared by that Python-backend model and `lrformer-serve`.
- `serve`: `lrformer-serve`'s server, a real tritonserver started from Python by NVIDIA PyTriton.

Nothing here imports torch.
"""

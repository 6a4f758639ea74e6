"""Triton Python-backend model: BGR frames or JPEG/PNG bytes in, class-id masks at the frame size out.

Written into a model repository as `NAME_frames/1/model.py` by `lrformer-triton` / `lrformer-export
--triton`. It runs lrformer-deploy's torch-free runtime (`Segmenter`: ONNX Runtime, or the TensorRT
engine when the manifest records one and TensorRT + a GPU are present), so the Python environment
Triton's Python backend uses needs `pip install "lrformer-deploy[cpu]"` (or `[gpu]`). Settings come from
the config's `parameters`: `manifest` (relative to this version folder), `backend`, `device`,
`resize`, `intra_op_threads`, `max_pixels` (per frame, checked before decoding; "0" = no limit); `class_names` and `palette` (JSON) are there for clients only.
"""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from lrformer_deploy.contract import MAX_PIXELS_SERVE
from lrformer_deploy.triton.frames import ENCODED_INPUT, FRAME_INPUT, MASK_OUTPUT, BadRequest, segment_requests


def _parameters(model_config):
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        from lrformer_deploy.runtime import Segmenter

        config = json.loads(args["model_config"])
        params = _parameters(config)
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("intra_op_threads") or 0) or None
        self.segmenter = Segmenter(folder / params.get("manifest", "model.json"),
                                   backend=params.get("backend") or "auto", device=params.get("device") or None,
                                   resize=params.get("resize") or "stretch", intra_op_threads=threads)
        # Absent in repositories written before the limit existed: those get the server default.
        self.max_pixels = int(params.get("max_pixels") or MAX_PIXELS_SERVE)
        out = pb_utils.get_output_config_by_name(config, MASK_OUTPUT)
        self.mask_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests):
        def tensor(request, name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        inputs = [(tensor(r, FRAME_INPUT), tensor(r, ENCODED_INPUT)) for r in requests]
        responses = []
        for result in segment_requests(self.segmenter, inputs, self.max_pixels):
            if isinstance(result, BadRequest):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(result))))
            else:
                mask = result.astype(self.mask_dtype, copy=False)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(MASK_OUTPUT, mask)]))
        return responses

    def finalize(self):
        self.segmenter.close()

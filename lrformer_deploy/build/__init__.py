"""Making artifacts: the one place graphs, reduced-precision graphs, engines and manifests are made.

    from lrformer_deploy.build import BuildRequest, build
    result = build(BuildRequest(checkpoint="t.pth", precisions=("fp16",), output_dir="engines"))

request.py (what to build, validation) -> pipeline.py (build(): export, precision, engine, publish),
with export.py (model -> static ONNX), engine.py (ONNX -> TensorRT engine), demo.py (the demo model)
and on_demand.py (the runtime's one door into this package). Importing it does not import torch.
"""
from lrformer_deploy.build.pipeline import build
from lrformer_deploy.build.steps import Artifact, BuildResult
from lrformer_deploy.build.request import BuildRequest, validate

__all__ = ["Artifact", "BuildRequest", "BuildResult", "build", "validate"]

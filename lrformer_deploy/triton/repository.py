"""Write a Triton model repository for an exported model: explicit configs derived from the graph/engine.

    REPO/NAME/config.pbtxt          the ONNX graph on ONNX Runtime, CPU instances (Triton's default config)
    REPO/NAME/configs/cpu.pbtxt     the same (select with tritonserver --model-config-name=cpu)
    REPO/NAME/configs/gpu.pbtxt     the TensorRT plan (tensorrt_plan) when an engine exists, else the graph on GPU
    REPO/NAME/configs/cpu-openvino.pbtxt  the same ONNX graph on Triton's openvino backend (CPU; bf16 artifacts
                                    with HINT_BF16; written to Triton's schema, not run here: no such server)
    REPO/NAME/1/model.onnx, model.plan
    REPO/NAME_frames/               Python-backend model: BGR frames / JPEG / PNG in, masks at the frame size out
    REPO/README.md                  how to start Triton on it, and a client

Every field is written explicitly: tensor names, data types and dims come from the graph (and the engine
record of the manifest); Triton's auto-completion is never needed. A static-batch graph gets
`max_batch_size: 0` with its batch in `dims`; a dynamic-batch graph gets `max_batch_size` = its maximum
batch (the TensorRT profile's maximum for the plan) and `dynamic_batching`.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lrformer_deploy import atomic
from lrformer_deploy.contract import MAX_PIXELS_SERVE
from lrformer_deploy.errors import UserError
from lrformer_deploy.manifest import load_manifest
from lrformer_deploy.runtime.postprocess import mask_dtype
from lrformer_deploy.runtime.spec import spec_from_manifest
from lrformer_deploy.triton.frames import ENCODED_INPUT, FRAME_INPUT, MASK_OUTPUT
from lrformer_deploy.triton.pbtxt import Enum, Map, render

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
FRAMES_SUFFIX = "_frames"
FRAMES_MANIFEST = "model.json"

# ONNX Runtime's type strings and TensorRT's DataType names -> Triton data types.
_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int32)": "TYPE_INT32",
              "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8",
              "tensor(bool)": "TYPE_BOOL"}
_TRT_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
              "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8", "BOOL": "TYPE_BOOL", "BF16": "TYPE_BF16"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    data_type: str  # Triton TYPE_*
    shape: tuple  # ints, or None for a symbolic dim


@dataclass
class Repository:
    path: Path
    models: list[str] = field(default_factory=list)
    plan: bool = False

    def models_line(self) -> str:
        return f"{self.path} ({', '.join(self.models)}{'; with TensorRT plan' if self.plan else ''})"

    def as_dict(self) -> dict:
        return {"path": str(self.path), "models": self.models, "tensorrt_plan": self.plan}


def graph_io(onnx_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs as the graph declares them, with their Triton data types."""
    from lrformer_deploy.runtime.backends.ort import read_graph_io

    def info(rows):
        out = []
        for name, kind, shape in rows:
            if kind not in _ORT_TYPES:
                raise UserError(f"{onnx_path.name}: tensor {name} has type {kind}, which has no Triton mapping here")
            out.append(TensorInfo(name, _ORT_TYPES[kind], tuple(d if isinstance(d, int) and d > 0 else None
                                                                for d in shape)))
        return out

    inputs, outputs = read_graph_io(onnx_path)
    return info(inputs), info(outputs)


def _batching(tensors: list[TensorInfo], max_batch: int | None) -> tuple[int, list[dict]]:
    """(max_batch_size, tensor configs): the batch dim leaves `dims` only when the graph batches dynamically."""
    configs = []
    for t in tensors:
        dims = list(t.shape)
        if max_batch:
            if dims[0] is not None:
                raise UserError(f"tensor {t.name} has a static batch {dims[0]} but the manifest says dynamic")
            dims = dims[1:]
        if any(d is None for d in dims):
            raise UserError(f"tensor {t.name} has a symbolic dim besides the batch: {t.shape}")
        configs.append({"name": t.name, "data_type": Enum(t.data_type), "dims": dims})
    return (max_batch or 0), configs


def model_config(name: str, platform: str, filename: str, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 max_batch: int | None, kind: str, instances: int = 1, threads: int = 0,
                 cc_filenames: dict[str, str] | None = None) -> dict:
    """One config.pbtxt as a dict (see pbtxt.render)."""
    max_batch_size, ins = _batching(inputs, max_batch)
    _, outs = _batching(outputs, max_batch)
    group = {"name": f"{name}_{kind.lower()}", "count": instances, "kind": Enum(f"KIND_{kind}")}
    if kind == "GPU":
        group["gpus"] = [0]
    config = {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "default_model_filename": filename,
        "cc_model_filenames": Map(cc_filenames) if cc_filenames else None,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": ins,
        "output": outs,
        "instance_group": [group],
        "dynamic_batching": {"max_queue_delay_microseconds": 1000} if max_batch_size else None,
    }
    if platform == "onnxruntime_onnx":
        # ONNX Runtime backend thread pools (0 = its default, one thread per core).
        config["parameters"] = Map({"intra_op_thread_count": {"string_value": str(threads)},
                                    "inter_op_thread_count": {"string_value": "1"}})
    return config


def openvino_config(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], max_batch: int | None,
                    instances: int = 1, threads: int = 0, bf16: bool = False) -> dict:
    """config.pbtxt for Triton's OpenVINO backend running the ONNX graph on the CPU (its parameters:
    PERFORMANCE_HINT, NUM_STREAMS, INFERENCE_NUM_THREADS, HINT_BF16).

    That backend has no f32 hint: an FP32/INT8 graph runs at OpenVINO's default CPU precision, which is bf16
    on CPUs with AMX (and on some with AVX512-BF16). lrformer-serve (the runtime's own OpenVINO runner)
    pins f32; docs/cpu.md says so.
    """
    max_batch_size, ins = _batching(inputs, max_batch)
    _, outs = _batching(outputs, max_batch)
    params = {"PERFORMANCE_HINT": {"string_value": "LATENCY"}, "NUM_STREAMS": {"string_value": "1"}}
    if threads:
        params["INFERENCE_NUM_THREADS"] = {"string_value": str(threads)}
    if bf16:
        params["HINT_BF16"] = {"string_value": "YES"}
    return {
        "name": name,
        "backend": "openvino",
        "max_batch_size": max_batch_size,
        "default_model_filename": ONNX_FILE,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": ins,
        "output": outs,
        "instance_group": [{"name": f"{name}_cpu", "count": instances, "kind": Enum("KIND_CPU")}],
        "dynamic_batching": {"max_queue_delay_microseconds": 1000} if max_batch_size else None,
        "parameters": Map(params),
    }


def frames_config(name: str, spec, max_batch: int, instances: int, backend: str, resize: str,
                  threads: int, max_pixels: int = MAX_PIXELS_SERVE) -> dict:
    mask_type = "TYPE_UINT8" if mask_dtype(spec.num_classes) == "uint8" else "TYPE_UINT16"
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": [
            {"name": FRAME_INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3], "optional": True},
            {"name": ENCODED_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1], "optional": True},
        ],
        "output": [{"name": MASK_OUTPUT, "data_type": Enum(mask_type), "dims": [-1, -1]}],
        "instance_group": [{"name": f"{name}_cpu", "count": instances, "kind": Enum("KIND_CPU")}],
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "parameters": Map({
            "manifest": {"string_value": FRAMES_MANIFEST},
            "backend": {"string_value": backend},
            "resize": {"string_value": resize},
            "intra_op_threads": {"string_value": str(threads)},
            "max_pixels": {"string_value": str(max_pixels)},
            "class_names": {"string_value": json.dumps(list(spec.class_names))},
            "palette": {"string_value": json.dumps([list(c) for c in spec.palette[:spec.num_classes]])},
        }),
    }


def check_repository_dir(path: Path) -> None:
    """Fail before any work if DIR cannot hold a repository."""
    if path.exists() and not path.is_dir():
        raise UserError(f"the Triton repository path {path} exists and is not a folder")
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write the Triton repository {path}: {parent} is not writable")


def _copy(src: Path, dst: Path) -> None:
    with atomic.atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def _engine_max_batch(record: dict) -> int | None:
    profile = (record.get("build_options") or {}).get("optimization_profile")
    return int(profile[-1]) if profile else None


def _engine_io(record: dict, graph_inputs: list[TensorInfo], graph_outputs: list[TensorInfo]):
    """Engine tensors: names and types from the engine record, dims from the graph it was built from."""
    def convert(entries, graph):
        by_name = {t.name: t for t in graph}
        out = []
        for e in entries:
            dtype = str(e.get("dtype", "")).rsplit(".", 1)[-1].upper()
            if e["name"] not in by_name or dtype not in _TRT_TYPES:
                raise UserError(f"the engine record's tensor {e['name']} ({e.get('dtype')}) does not match the graph")
            out.append(TensorInfo(e["name"], _TRT_TYPES[dtype], by_name[e["name"]].shape))
        return out

    return convert(record.get("inputs") or [], graph_inputs), convert(record.get("outputs") or [], graph_outputs)


def write_repository(manifest_path: Path, out_dir: Path, name: str | None = None, *, frames_max_batch: int = 8,
                     instances: int = 1, threads: int = 0, backend: str = "auto",
                     resize: str = "stretch", max_pixels: int = MAX_PIXELS_SERVE) -> Repository:
    """Write (or refresh) the models of one exported artifact into the repository `out_dir`."""
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    spec = spec_from_manifest(manifest, manifest_path)
    name = name or spec.name
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"{name!r} cannot be a Triton model name")
    if spec.onnx_path is None or not spec.onnx_path.is_file():
        raise UserError(f"{manifest_path}: its ONNX graph {spec.onnx_path} is missing")
    check_repository_dir(out_dir)
    inputs, outputs = graph_io(spec.onnx_path)
    if [t.name for t in inputs] != [spec.input_name] or spec.output_name not in [t.name for t in outputs]:
        raise UserError(f"{spec.onnx_path.name}: its tensors do not match the manifest's input/output names")
    max_batch = spec.batch if spec.dynamic_batch else None

    model_dir, version = out_dir / name, out_dir / name / "1"
    for folder in (version, model_dir / "configs", out_dir / f"{name}{FRAMES_SUFFIX}" / "1"):
        folder.mkdir(parents=True, exist_ok=True)
    _copy(spec.onnx_path, version / ONNX_FILE)
    onnx_cpu = model_config(name, "onnxruntime_onnx", ONNX_FILE, inputs, outputs, max_batch, "CPU",
                            instances, threads)
    gpu = model_config(name, "onnxruntime_onnx", ONNX_FILE, inputs, outputs, max_batch, "GPU", instances)
    plan = spec.engine_path is not None and spec.engine_path.is_file()
    frames_manifest = json.loads(json.dumps(manifest))
    frames_manifest["artifacts"]["onnx"]["file"] = f"../../{name}/1/{ONNX_FILE}"
    frames_manifest["artifacts"].pop("engine", None)
    if plan:
        record = spec.engine_record or {}
        cc = str(record.get("compute_capability") or "")
        plan_file = f"model-sm{cc.replace('.', '')}.plan" if cc and cc != "unknown" else PLAN_FILE
        _copy(spec.engine_path, version / plan_file)
        plan_in, plan_out = _engine_io(record, inputs, outputs)
        gpu = model_config(name, "tensorrt_plan", plan_file, plan_in, plan_out, _engine_max_batch(record), "GPU",
                           instances, cc_filenames={cc: plan_file} if plan_file != PLAN_FILE else None)
        frames_manifest["artifacts"]["engine"] = dict(record, file=f"../../{name}/1/{plan_file}")
    atomic.write_text(model_dir / "config.pbtxt", render(onnx_cpu))
    atomic.write_text(model_dir / "configs" / "cpu.pbtxt", render(onnx_cpu))
    atomic.write_text(model_dir / "configs" / "gpu.pbtxt", render(gpu))
    atomic.write_text(model_dir / "configs" / "cpu-openvino.pbtxt",
                      render(openvino_config(name, inputs, outputs, max_batch, instances, threads,
                                             bf16=manifest.get("precision") == "bf16")))

    frames = f"{name}{FRAMES_SUFFIX}"
    frames_dir = out_dir / frames
    atomic.write_text(frames_dir / "1" / FRAMES_MANIFEST, json.dumps(frames_manifest, indent=2) + "\n")
    atomic.write_text(frames_dir / "1" / "model.py", (Path(__file__).with_name("frames_model.py")).read_text())
    atomic.write_text(frames_dir / "config.pbtxt",
                      render(frames_config(frames, spec, frames_max_batch, 1, backend, resize, threads,
                                           max_pixels)))
    atomic.write_text(out_dir / "README.md", repository_readme(name, spec, plan))
    return Repository(out_dir, [name, frames], plan)


def _input_words(spec) -> str:
    if spec.input_dtype == "uint8":
        return f"uint8 {list(spec.model_input_shape)} {spec.color_order} frames (the graph normalises them)"
    return f"float32 {list(spec.input_shape)} normalised {spec.color_order} NCHW"


def repository_readme(name: str, spec, plan: bool) -> str:
    frames = f"{name}{FRAMES_SUFFIX}"
    h, w = spec.input_size
    return f"""# Triton model repository: {name}

Written by lrformer-deploy (`lrformer-triton` / `lrformer-export --triton`). Two models:

| model | what | tensors |
|---|---|---|
| `{name}` | the graph itself{' (ONNX; TensorRT plan in `configs/gpu.pbtxt`)' if plan else ' (ONNX)'} | `{spec.input_name}` {_input_words(spec)} -> `{spec.output_name}` ({spec.output_kind}) |
| `{frames}` | camera frames in, masks out (Python backend running lrformer-deploy's runtime) | `{FRAME_INPUT}` uint8 [N, H, W, 3] BGR of any size, or `{ENCODED_INPUT}` JPEG/PNG bytes [N, 1] -> `{MASK_OUTPUT}` uint8 [N, H, W] class ids at the frame size |

`{frames}`'s config carries the class names and palette (parameters `class_names`, `palette`, JSON), so
a client can colour masks without the manifest. The graph's input size is {h}x{w}; frames of any size
are resized by the model and masks come back at the frame's size.

## GPU machine: the Triton container

```bash
docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v "$PWD":/models -v /path/to/lrformer-deploy:/src nvcr.io/nvidia/tritonserver:25.01-py3 \\
  bash -c 'pip install "/src[gpu]" && tritonserver --model-repository=/models --model-config-name=gpu'
```

`--model-config-name=cpu-openvino` selects `configs/cpu-openvino.pbtxt`: the same graph on Triton's
`openvino` backend on the CPU (a bf16 artifact with `HINT_BF16`; that backend cannot pin f32, so on CPUs
with AMX an FP32 graph may run in bf16 there).

`--model-config-name=gpu` selects `configs/gpu.pbtxt` ({'the TensorRT plan: it only loads on the TensorRT version and GPU generation it was built with, see `cc_model_filenames`' if plan else 'the ONNX graph on the GPU'});
without it Triton uses `config.pbtxt` (ONNX Runtime on the CPU). `{frames}` needs lrformer-deploy in the
container's Python (the `pip install` above).

## CPU machine without the container: lrformer-serve

```bash
pip install "lrformer-deploy[cpu,serve]"
lrformer-serve {frames}/1/{FRAMES_MANIFEST}     # a real tritonserver via PyTriton, HTTP :8000, gRPC :8001
```

It serves the model as `{frames}` with the same tensors, on 127.0.0.1 (`--host 0.0.0.0` to expose it).

## Client

```python
import cv2, numpy as np, tritonclient.http as httpclient

client = httpclient.InferenceServerClient("127.0.0.1:8000")
frame = cv2.imread("street.jpg")                                   # BGR uint8, any size
inp = httpclient.InferInput("{FRAME_INPUT}", [1, *frame.shape], "UINT8")
inp.set_data_from_numpy(frame[None])
mask = client.infer("{frames}", [inp]).as_numpy("{MASK_OUTPUT}")[0]       # H x W class ids
```

JPEG/PNG bytes instead: `InferInput("{ENCODED_INPUT}", [1, 1], "BYTES")` with
`np.array([[open("street.jpg", "rb").read()]], dtype=object)`.
"""

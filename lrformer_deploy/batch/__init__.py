"""Batch segmentation on Ray Data: the pieces behind `lrformer-batch`, for your own pipelines.

    import ray, ray.data
    from lrformer_deploy.batch import BatchSegmenter, decode_images

    ds = ray.data.read_binary_files(paths, include_paths=True).map_batches(decode_images)
    ds = ds.map_batches(BatchSegmenter, fn_constructor_kwargs={"model": "m.onnx"},
                        compute=ray.data.ActorPoolStrategy(size=2), batch_size=16, num_cpus=1)
    for row in ds.iter_rows():            # without output_dir: rows carry `mask` (class ids, frame size)
        ...

Importing this package does not import Ray; `run_job`/`start_ray` (in `.job`) do.
"""
from lrformer_deploy.batch.inputs import Item, plan_inputs
from lrformer_deploy.batch.outputs import Layout, assemble_overlay_video, mask_name, overlay_name, write_image
from lrformer_deploy.batch.stages import BatchSegmenter, decode_images, decode_video_ranges

__all__ = ["BatchSegmenter", "Item", "Layout", "assemble_overlay_video", "decode_images", "decode_video_ranges",
           "mask_name", "overlay_name", "plan_inputs", "write_image"]

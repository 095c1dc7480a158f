"""RoIAlign against ONNX Runtime's own RoiAlign operator, a hand-computed ramp, and its ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgeseg.models.roi_align import RoIAlign, roi_align

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def single_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return options


def ort_roi_align(
    features: np.ndarray,
    rois: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = True,
) -> np.ndarray:
    """The reference: a one-node ONNX graph (opset 16 RoiAlign, mode avg) run by ONNX Runtime."""
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        mode="avg",
        output_height=output_size[0],
        output_width=output_size[1],
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "roi_align_reference",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, None),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    session = ort.InferenceSession(
        model.SerializeToString(), single_thread(), providers=["CPUExecutionProvider"]
    )
    feed = {
        "X": features,
        "rois": np.ascontiguousarray(rois[:, 1:]),
        "batch_indices": rois[:, 0].astype(np.int64),
    }
    return session.run(None, feed)[0]


# (batch_index, x1, y1, x2, y2) in input pixels of a 64x64 image.
EDGE_CASE_ROIS = np.array(
    [
        [0, 8.0, 4.0, 40.0, 52.0],  # ordinary
        [1, 20.0, 12.0, 60.0, 30.0],  # other image, wide (non-square)
        [1, 30.0, 2.0, 38.0, 60.0],  # tall and thin
        [0, -12.0, -6.0, 20.0, 18.0],  # partly outside, top-left
        [1, 44.0, 50.0, 80.0, 75.0],  # partly outside, bottom-right
        [0, 0.0, 0.0, 64.0, 64.0],  # whole image, touching every border
        [1, 31.2, 17.7, 31.6, 18.1],  # smaller than one input pixel
        [0, 10.3, 40.9, 11.0, 55.5],  # under a pixel wide, tall
        [1, -40.0, -40.0, -20.0, -25.0],  # entirely outside
        [0, 63.5, 63.5, 70.0, 70.0],  # starts at the last pixel
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(
    ("stride", "output_size", "sampling_ratio"),
    [(4, (7, 7), 2), (8, (5, 9), 2), (16, (4, 4), 3), (2, (3, 6), 4)],
)
def test_matches_onnxruntime_roialign(aligned, stride, output_size, sampling_ratio):
    rng = np.random.default_rng(stride)
    features = rng.standard_normal((2, 5, 64 // stride, 64 // stride)).astype(np.float32)
    expected = ort_roi_align(features, EDGE_CASE_ROIS, output_size, 1.0 / stride, sampling_ratio, aligned)
    actual = roi_align(
        torch.from_numpy(features),
        torch.from_numpy(EDGE_CASE_ROIS),
        output_size,
        1.0 / stride,
        sampling_ratio,
        aligned,
    )
    assert actual.shape == (len(EDGE_CASE_ROIS), 5, *output_size)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=0)
    # The entirely-outside ROI pools zeros; the others do not.
    assert float(actual[8].abs().max()) == 0.0
    assert float(actual[0].abs().max()) > 0.0


def test_matches_onnxruntime_on_many_random_rois():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((3, 4, 12, 10)).astype(np.float32)
    corners = rng.uniform(-20, 100, size=(300, 2))
    sizes = rng.exponential(20, size=(300, 2)) + 0.05
    rois = np.concatenate([rng.integers(0, 3, size=(300, 1)), corners, corners + sizes], axis=1).astype(
        np.float32
    )
    expected = ort_roi_align(features, rois, (6, 5), 1 / 8, 2)
    actual = roi_align(torch.from_numpy(features), torch.from_numpy(rois), (6, 5), 1 / 8, 2)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=0)


def test_linear_ramp_gives_bin_centres_exactly():
    # f(y, x) = 10*y + x at feature cell centres. Bilinear sampling is exact on a linear function, and the
    # mean of a bin's evenly spread samples is the bin centre, so each output is f(bin centre).
    # ROI (x1, y1, x2, y2) = (8, 4, 24, 20) px at stride 4, aligned: x spans 8/4-0.5 = 1.5 .. 24/4-0.5 = 5.5,
    # y spans 0.5 .. 4.5. With a 4x4 output each bin is 1 cell: centres x = 2, 3, 4, 5 and y = 1, 2, 3, 4.
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    features = (10 * ys + xs)[None, None]
    rois = torch.tensor([[0.0, 8.0, 4.0, 24.0, 20.0]])
    expected = torch.tensor(
        [
            [12.0, 13.0, 14.0, 15.0],
            [22.0, 23.0, 24.0, 25.0],
            [32.0, 33.0, 34.0, 35.0],
            [42.0, 43.0, 44.0, 45.0],
        ]
    )
    for sampling_ratio in (2, 3):
        out = roi_align(features, rois, (4, 4), 0.25, sampling_ratio)
        torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    # Non-square output 2x4: y bins are 2 cells tall with centres 1.5 and 3.5.
    out = roi_align(features, rois, (2, 4), 0.25, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[17.0, 18.0, 19.0, 20.0], [37.0, 38.0, 39.0, 40.0]]))


def test_batch_index_selects_the_image():
    features = torch.stack([torch.full((2, 4, 4), 1.0), torch.full((2, 4, 4), 5.0)])
    rois = torch.tensor([[1.0, 0, 0, 16, 16], [0.0, 0, 0, 16, 16]])
    out = roi_align(features, rois, 2, 0.25, 2)
    assert torch.all(out[0] == 5.0) and torch.all(out[1] == 1.0)


def test_empty_rois_and_bad_shapes():
    features = torch.randn(2, 3, 8, 8)
    out = roi_align(features, torch.zeros(0, 5), (4, 3), 0.25, 2)
    assert out.shape == (0, 3, 4, 3)
    with pytest.raises(ValueError, match=r"rois must be \[N,5\]"):
        roi_align(features, torch.zeros(3, 4), 4, 0.25)
    with pytest.raises(ValueError, match="features must be"):
        roi_align(features[0], torch.zeros(1, 5), 4, 0.25)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(features, torch.zeros(1, 5), 4, 0.25, sampling_ratio=0)


def test_gradient_matches_finite_differences():
    features = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 17.0, 13.0], [1, -3.0, 4.0, 9.0, 21.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (3, 2), 0.25, 2), (features,))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_onnx_export_with_dynamic_roi_count(tmp_path):
    module = RoIAlign((5, 4), 1 / 8, 2)
    features = torch.randn(2, 3, 8, 8)
    path = tmp_path / "roi_align.onnx"
    torch.onnx.export(
        module,
        (features, torch.from_numpy(EDGE_CASE_ROIS[:3])),
        str(path),
        input_names=["features", "rois"],
        output_names=["pooled"],
        dynamic_axes={"features": {0: "batch"}, "rois": {0: "num_rois"}, "pooled": {0: "num_rois"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), single_thread(), providers=["CPUExecutionProvider"])
    for count in (len(EDGE_CASE_ROIS), 1, 0):
        rois = EDGE_CASE_ROIS[:count]
        (pooled,) = session.run(None, {"features": features.numpy(), "rois": rois})
        assert pooled.shape == (count, 3, 5, 4)
        if count:
            reference = ort_roi_align(features.numpy(), rois, (5, 4), 1 / 8, 2)
            np.testing.assert_allclose(pooled, reference, atol=1e-4, rtol=0)

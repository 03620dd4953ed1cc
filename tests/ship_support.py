"""Small real bundles for the registry and updater tests, without torch.

Graphs are built with ``onnx.helper``: the embedding is ``relu(flatten(x) @ E)`` (``emb_dim`` wide) and the
classifier is ``embedding @ W.T + b``, so ``head.npz`` is consistent with the classifier graph exactly as in an
exported bundle. The same ``emb_seed`` gives byte-identical ``embedding.onnx`` files (so local heads carry over),
another ``emb_seed`` a different one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekws.features import FeatureConfig

CLASSES = ("_silence_", "yes", "no")


def _graphs(fc: FeatureConfig, E: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[bytes, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in = int(np.prod(fc.shape))
    x = helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, ["batch", 1, *fc.shape])

    def model(nodes, inits, out_dim):
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", out_dim])
        g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekws-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    emb_nodes = [helper.make_node("Flatten", ["mfcc"], ["flat"], axis=1),
                 helper.make_node("MatMul", ["flat", "E"], ["pre"]),
                 helper.make_node("Relu", ["pre"], ["emb"])]
    E_init = numpy_helper.from_array(E.astype(np.float32), "E")
    assert E.shape[0] == n_in
    embedding = model(emb_nodes[:-1] + [helper.make_node("Relu", ["pre"], ["out"])], [E_init], E.shape[1])
    cls_nodes = emb_nodes + [helper.make_node("Gemm", ["emb", "W", "b"], ["out"], transB=1)]
    classifier = model(cls_nodes, [E_init, numpy_helper.from_array(W.astype(np.float32), "W"),
                                   numpy_helper.from_array(b.astype(np.float32), "b")], W.shape[0])
    return classifier, embedding


def tiny_bundle(out: Path, private_key, *, emb_seed: int = 0, head_seed: int = 0, target: str = "rpi",
                emb_dim: int = 8, classes=CLASSES, broken_classifier: bool = False,
                padding_bytes: int = 0) -> Path:
    """A signed bundle directory with real ONNX graphs; different ``head_seed`` -> different manifest."""
    from edgekws.bundle import write_bundle

    fc = FeatureConfig(normalization="utterance")
    n_in = int(np.prod(fc.shape))
    E = np.random.default_rng(1000 + emb_seed).standard_normal((n_in, emb_dim)).astype(np.float32) / np.sqrt(n_in)
    rng = np.random.default_rng(2000 + head_seed)
    W = rng.standard_normal((len(classes), emb_dim)).astype(np.float32)
    b = rng.standard_normal(len(classes)).astype(np.float32)
    classifier, embedding = _graphs(fc, E, W, b)
    if broken_classifier:  # signed and hashed, but not a loadable graph: only a smoke test can catch it
        classifier = b"this is not an onnx graph" + bytes(64)
    import io

    buf = io.BytesIO()
    np.savez(buf, W=W, b=b)
    files: dict = {"model.onnx": classifier, "embedding.onnx": embedding, "head.npz": buf.getvalue()}
    if padding_bytes:
        files["padding.bin"] = np.random.default_rng(head_seed).bytes(padding_bytes)
    return write_bundle(out, files, target=target, classes=list(classes), feature_config=fc,
                        model={"name": "tiny-linear", "emb_dim": emb_dim},
                        graphs={"classifier": {"onnx_fp32": "model.onnx"}, "embedding": {"onnx_fp32": "embedding.onnx"}},
                        private_key=private_key, extra={"release_note": f"emb {emb_seed} head {head_seed}"})

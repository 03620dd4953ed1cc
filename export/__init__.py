"""Model export (edgekws.export): ONNX / TFLite graphs and bundles."""

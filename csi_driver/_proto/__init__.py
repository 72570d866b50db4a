"""Stubs generated from protos/csi.proto by `python -m csi_driver.protogen`. Never edit by hand."""

"""JR2Net: joint 3D face reconstruction and reenactment, with C++/CUDA kernels and a gRPC server."""

__version__ = "0.1.0"

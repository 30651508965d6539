"""Native CPU kernels for decoding: the C++ source (`native_matmul.cc`), its loader and backend object (`native`),
and its standalone test driver (`kernel_test.cc`, built with sanitizers by `.ci/kernel-tests`).

Nothing here is used unless asked for: `gpt2tf.kernels.native.load()` returns the backend that the decode runner
passes, as `kernels=`, to the model and the sampler; loading or training a model never builds the kernels.
"""

"""The dtype names the convert commands accept (--dtype), each to a torch dtype name. Torch-free, and a module of its
own so that the convert submodules use it without importing their package."""

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "16-true": "float16",
    "bf16-true": "bfloat16",
    "32-true": "float32",
}
